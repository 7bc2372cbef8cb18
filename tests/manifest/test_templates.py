"""Jinja2 in manifests and template steps: values can be formatted, Python cannot be reached,
and a template cannot make the loader run out of memory or crash with a traceback."""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired

from tests.manifest.hostile import check_refused, load_bounded

HEAD = "vars: {tag: v1, names: [a, b], conf: {port: 80}}\nkind: Service\nname: web\nimage:\n"


def manifest(value: str) -> str:
    """A service whose line 7 holds ``value`` (a label, rendered by the manifest templating)."""
    return HEAD + "  from: scratch\n  labels:\n    x: '" + value.replace("'", "''") + "'\n"


def template_step(tmp_path, template: str) -> str:
    (tmp_path / "t.j2").write_text(template)
    return HEAD + "  from: scratch\n  steps:\n    - template: {src: t.j2, dest: /etc/t}\n"


# expressions that reach Python from a plain Jinja2 environment; each writes MARKER when it runs
ESCAPES = {
    "globals through self": "{{ self.__init__.__globals__.__builtins__.__import__('os')"
                            ".system('touch MARKER') }}",
    "subclasses": "{% for c in ''.__class__.__mro__[1].__subclasses__() %}"
                  "{% if c.__name__ == 'Popen' %}{{ c(['touch', 'MARKER']).wait() }}{% endif %}{% endfor %}",
    "attr filter": "{{ (self|attr('__init__')|attr('__globals__'))['__builtins__']['__import__']('os')"
                   ".system('touch MARKER') }}",
    "lipsum globals": "{{ lipsum.__globals__['os'].system('touch MARKER') }}",
    "cycler globals": "{{ cycler.__init__.__globals__.os.system('touch MARKER') }}",
    "format string": "{{ '{0.__init__.__globals__}'.format(self) }}",
}


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_from_manifest_value_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(manifest(ESCAPES[name]))
    with pytest.raises(ManifestError) as err:
        load_desired(str(tmp_path), {})
    assert err.value.line == 7 and "labels/x" in str(err.value), str(err.value)
    assert not (tmp_path / "MARKER").exists(), "the expression ran a command"


@pytest.mark.parametrize("name", sorted(ESCAPES))
def test_escape_from_template_step_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.yaml").write_text(template_step(tmp_path, "hello\n" + ESCAPES[name] + "\n"))
    with pytest.raises(ManifestError) as err:
        load_desired(str(tmp_path), {})
    assert err.value.line == 7 and "t.j2" in str(err.value), str(err.value)
    assert not (tmp_path / "MARKER").exists(), "the template ran a command"


def test_unsafe_access_says_why(tmp_path):
    (tmp_path / "m.yaml").write_text(manifest("{{ ''.__class__ }}"))
    with pytest.raises(ManifestError, match=r"m.yaml:7 services/web/image/labels/x: .*unsafe"):
        load_desired(str(tmp_path), {})


# templates that exhaust memory, recurse or fail at run time; each must be a located error
BOMBS = {
    "power": "{{ 9 ** (9 ** 9) }}",
    "repeat": "{{ 'x' * 2000000000 }}",
    "repeat list": "{{ [1] * 2000000000 }}",
    "center": "{{ 'x' | center(2000000000) }}",
    "format width": "{{ '%2000000000s' % 'x' }}",
    "str format width": "{{ '{:>2000000000}'.format('x') }}",
    "ljust": "{{ 'x'.ljust(2000000000) }}",
    "big range": "{% for i in range(2000000000) %}{% endfor %}",
    "doubling macro": "{% macro d(s, n) %}{% if n %}{{ d(s ~ s, n - 1) }}{% else %}{{ s }}{% endif %}"
                      "{% endmacro %}{{ d('x', 40) }}",
    "namespace doubling": "{% set ns = namespace(s='x') %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}"
                          "{% endfor %}{{ ns.s }}",
    "nested loops output": "{% for i in range(3000) %}{% for j in range(3000) %}xxxxxxxxxx{% endfor %}{% endfor %}",
    "lipsum": "{{ lipsum(2000000000) }}",
    "deep recursion": "{% macro r() %}{{ r() }}{% endmacro %}{{ r() }}",
    "division by zero": "{{ 1 / 0 }}",
    "type error": "{{ names + 1 }}",
}


STEP_BOMBS = ["power", "doubling macro", "nested loops output", "division by zero"]


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Every bomb loaded once, in one bounded child: as a manifest value and as a template step."""
    cases = {}
    for i, name in enumerate(sorted(BOMBS)):
        directory = tmp_path_factory.mktemp(f"value{i}")
        (directory / "m.yaml").write_text(manifest(BOMBS[name]))
        cases[f"value {name}"] = directory
        if name in STEP_BOMBS:
            directory = tmp_path_factory.mktemp(f"step{i}")
            (directory / "m.yaml").write_text(template_step(directory, BOMBS[name]))
            cases[f"step {name}"] = directory
    return load_bounded(cases)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_template_bomb_in_manifest_is_refused(answers, name):
    answer = check_refused(answers[f"value {name}"])
    assert answer["line"] == 7 and "labels/x" in answer["error"], answer


@pytest.mark.parametrize("name", STEP_BOMBS)
def test_template_bomb_in_template_step_is_refused(answers, name):
    answer = check_refused(answers[f"step {name}"])
    assert answer["line"] == 7 and "t.j2" in answer["error"], answer


def test_formatting_still_works(tmp_path):
    text = ("{{ tag | upper }}-{{ names | join(',') }}-{{ conf.port + 1 }}-{{ '%s:%d' % (tag, 3) }}"
            "-{{ '{}+{}'.format(tag, 2) }}-{{ missing | default('d') }}-{{ 2 ** 10 }}-{{ 'ab' * 3 }}"
            "-{% for n in names %}{{ loop.index }}{{ n }}{% endfor %}-{{ range(3) | list | length }}"
            "-{{ {'k': 1}.items() | list | length }}-{{ tag.replace('v', 'w') }}")
    (tmp_path / "m.yaml").write_text(template_step(tmp_path, text + "\n"))
    step = load_desired(str(tmp_path), {}).services["web"].image.steps[0]
    assert step.content == b"V1-a,b-81-v1:3-v1+2-d-1024-ababab-1a2b-3-1-w1\n"


def test_undefined_is_still_strict(tmp_path):
    (tmp_path / "m.yaml").write_text(manifest("{{ nope }}"))
    with pytest.raises(ManifestError, match=r"m.yaml:7 .*undefined variable"):
        load_desired(str(tmp_path), {})
