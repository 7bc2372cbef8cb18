"""check_inputs: secrets' sources, --var names and step sources, reported together and located,
before anything is built or any host is contacted."""
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired
from orchestrator.manifest.inputs import LocalFiles, check_inputs, load_checked

REPO = Path(__file__).resolve().parents[2]

APP = """\
vars: {release: "1"}
kind: Service
name: app
image:
  from: scratch
  platforms: [linux/amd64]
  steps:
    - copy: {src: www, dest: /srv/www}
    - template: {src: page.j2, dest: /srv/page}
  labels: {version: "{{ release }}"}
deploy:
  secrets:
    token: {env: APP_TOKEN}
    key: {file: keys/app.key}
"""


def write(root: Path, files) -> str:
    for name, text in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return str(root)


@pytest.fixture
def app(tmp_path):
    return write(tmp_path / "m", {"app.yaml": APP, "www/index.html": "hi\n",
                                  "page.j2": "{{ service }} {{ greeting | default('x') }}\n",
                                  "keys/app.key": "s3cret\n"})


class FakeFiles(LocalFiles):
    """The real view with some paths made unreadable (root reads everything, so chmod cannot)."""

    def __init__(self, unreadable):
        self.unreadable = set(unreadable)

    def problem(self, path):
        for bad in self.unreadable:
            if path == bad or bad.startswith(path.rstrip("/") + "/"):
                rel = os.path.relpath(bad, path)
                return "Permission denied" if rel == "." else f"{rel}: Permission denied"
        return super().problem(path)


def messages(problems):
    return [str(p) for p in problems]


def test_all_inputs_present_is_quiet(app):
    desired = load_desired(app, {})
    assert check_inputs(desired, {}, {"APP_TOKEN": "t"}, LocalFiles()) == []


def test_missing_env_secret_is_located_and_says_how_to_provide_it(app):
    desired = load_desired(app, {})
    [problem] = check_inputs(desired, {}, {}, LocalFiles())
    assert isinstance(problem, ManifestError)
    assert problem.line == 13 and problem.file.endswith("app.yaml")
    assert str(problem).endswith(
        "app.yaml:13 services/app/deploy/secrets/token: environment variable APP_TOKEN is not set "
        "(provide it: export APP_TOKEN=...)")


def test_missing_secret_file_names_the_file_to_create(app):
    os.remove(os.path.join(app, "keys/app.key"))
    desired = load_desired(app, {})
    [problem] = check_inputs(desired, {}, {"APP_TOKEN": "t"}, LocalFiles())
    text = str(problem)
    assert "app.yaml:14 services/app/deploy/secrets/key: secret file" in text
    assert os.path.join(app, "keys/app.key") in text and "does not exist" in text
    assert "create it" in text and "chmod 600" in text


def test_secret_file_that_is_a_directory(app):
    os.remove(os.path.join(app, "keys/app.key"))
    os.mkdir(os.path.join(app, "keys/app.key"))
    [problem] = check_inputs(load_desired(app, {}), {}, {"APP_TOKEN": "t"}, LocalFiles())
    assert "is a directory" in str(problem)


def test_secrets_can_be_left_out_for_a_build(app):
    assert check_inputs(load_desired(app, {}), {}, {}, LocalFiles(), secrets=False) == []


def test_unknown_var_gets_a_did_you_mean(app):
    desired = load_desired(app, {"relase": "2"})
    [problem] = check_inputs(desired, {"relase": "2"}, {"APP_TOKEN": "t"}, LocalFiles())
    assert str(problem) == '--var relase: no manifest or template uses "relase" (did you mean "release"?)'


@pytest.mark.parametrize("name", ["release", "greeting", "service_note"])
def test_vars_that_manifests_or_templates_use_or_declare_are_known(app, tmp_path, name):
    # release: declared and used in the manifest; greeting: used (with a default) in a template file
    if name == "service_note":
        Path(app, "app.yaml").write_text(APP.replace('labels: {version: "{{ release }}"}',
                                                     'labels: {version: "{% if service_note %}x{% endif %}"}'))
    desired = load_desired(app, {name: "1"})
    assert check_inputs(desired, {name: "1"}, {"APP_TOKEN": "t"}, LocalFiles()) == []


def test_unreadable_copy_source_is_located(app):
    desired = load_desired(app, {})
    bad = os.path.join(os.path.realpath(app), "www", "index.html")
    [problem] = check_inputs(desired, {}, {"APP_TOKEN": "t"}, FakeFiles({bad}))
    assert "app.yaml:8 services/app/image/steps/0/copy/src" in str(problem)
    assert 'cannot read "www": index.html: Permission denied' in str(problem)


def test_every_problem_is_reported_together(app):
    os.remove(os.path.join(app, "keys/app.key"))
    with pytest.raises(ManifestError) as err:
        load_checked(app, {"relase": "2"}, {}, LocalFiles())
    lines = str(err.value).splitlines()
    assert lines[0] == "3 problems in the manifests and their inputs (nothing was built, no host contacted):"
    assert "app.yaml:13 services/app/deploy/secrets/token: environment variable APP_TOKEN" in lines[1]
    assert "app.yaml:14 services/app/deploy/secrets/key: secret file" in lines[2]
    assert lines[3].startswith("  --var relase: ")
    assert err.value.exit_code == 3


def test_a_broken_service_does_not_hide_another_services_missing_secret(tmp_path):
    src = write(tmp_path / "m", {
        "a.yaml": "kind: Service\nname: a\nimage: {from: scratch, platforms: [linux/amd64]}\n"
                  "deploy: {portz: []}\n",
        "b.yaml": "kind: Service\nname: b\nimage: {from: scratch, platforms: [linux/amd64]}\n"
                  "deploy:\n  secrets: {k: {env: B_KEY}}\n"})
    with pytest.raises(ManifestError) as err:
        load_checked(src, {}, {}, LocalFiles())
    text = str(err.value)
    assert 'a.yaml:4 services/a/deploy/portz: unknown key "portz"' in text
    assert "b.yaml:5 services/b/deploy/secrets/k: environment variable B_KEY is not set" in text


def test_one_problem_reads_as_before(app):
    with pytest.raises(ManifestError) as err:
        load_checked(app, {}, {}, LocalFiles())
    assert "\n" not in str(err.value) and "APP_TOKEN" in str(err.value)


def test_apply_stops_on_a_missing_secret_before_any_build_or_host(tmp_path):
    """The issue's case: the python-app example without PYAPP_GREETING_KEY. Its fleet is swapped
    for an unreachable real host so that a regression could neither bring up a lab nor reach one."""
    src = tmp_path / "python-app"
    shutil.copytree(REPO / "examples" / "python-app", src)
    text = (src / "app.yaml").read_text()
    head, _, rest = text.partition("---\n")
    (src / "app.yaml").write_text(
        "kind: Fleet\nname: far\nhosts:\n  - {name: far-1, address: 192.0.2.1, port: 1}\n---\n" + rest)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k != "PYAPP_GREETING_KEY"}
    env["ORCH_HOME"] = str(home)
    proc = subprocess.run([sys.executable, "-m", "orchestrator.cli", "apply", str(src)], env=env,
                          capture_output=True, text=True, timeout=20, cwd=tmp_path)
    assert proc.returncode == 3, proc.stderr
    assert "python-app/app.yaml:" in proc.stderr
    assert "services/pyapp/deploy/secrets/greeting_key: environment variable PYAPP_GREETING_KEY is not set" \
        in proc.stderr
    assert "export PYAPP_GREETING_KEY=" in proc.stderr
    assert not home.exists()          # no store, no build, no agent bundle
