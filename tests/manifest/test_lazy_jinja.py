"""Jinja2 is imported when a manifest has something to render, never for one that has not."""
import subprocess
import sys
import textwrap

from tests.conftest import REPO

PLAIN = "kind: Service\nname: web\nimage:\n  from: scratch\n  cmd: [/web]\n"
CODE = """
import os, sys
from orchestrator.manifest.inputs import load_checked
desired = load_checked(sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:]), os.environ)
print(desired.services["web"].image.config.cmd, "jinja2" in sys.modules)
"""


def load_in_fresh_process(directory, *var_args):
    p = subprocess.run([sys.executable, "-c", CODE, str(directory), *var_args], capture_output=True,
                       text=True, cwd=REPO)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def test_a_manifest_without_markup_does_not_import_jinja2(tmp_path):
    (tmp_path / "m.yaml").write_text(PLAIN)
    assert load_in_fresh_process(tmp_path) == "('/web',) False"


def test_a_var_given_for_a_manifest_without_markup_does_not_import_jinja2(tmp_path):
    (tmp_path / "m.yaml").write_text("vars: {n: 1}\n---\n" + PLAIN)
    assert load_in_fresh_process(tmp_path, "n=2") == "('/web',) False"


def test_markup_is_rendered_with_jinja2(tmp_path):
    (tmp_path / "m.yaml").write_text("vars: {n: 1}\n---\n" + PLAIN.replace("/web", "'/web{{ n + 1 }}'"))
    assert load_in_fresh_process(tmp_path) == "('/web2',) True"


def test_a_template_step_is_rendered_with_jinja2(tmp_path):
    (tmp_path / "t.j2").write_text("workers = {{ n | int + 1 }}\n")
    (tmp_path / "m.yaml").write_text("vars: {n: 1}\n---\n" + PLAIN + "  steps:\n    - template: {src: t.j2, dest: /etc/t}\n")
    assert load_in_fresh_process(tmp_path) == "('/web',) True"


def test_templates_that_only_name_variables_need_no_jinja2(tmp_path):
    """examples/python-app: `{{ release }}` in the manifest, `release = {{ release }}` in a
    template step (plain_templates renders them, with Jinja2's output)."""
    (tmp_path / "t.j2").write_text("# a comment\nrelease = {{ n }}\nname = {{service}}\n")
    (tmp_path / "m.yaml").write_text("vars: {n: 1}\n---\n" + PLAIN.replace("/web", "'/web{{ n }}'")
                                     + "  steps:\n    - template: {src: t.j2, dest: /etc/t}\n")
    assert load_in_fresh_process(tmp_path) == "('/web1',) False"
