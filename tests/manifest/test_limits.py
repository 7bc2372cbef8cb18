"""Hostile YAML: every bomb is refused with a located error, fast and in bounded memory.

Each bomb is loaded in a child process with an address-space limit and a deadline
(``hostile.load_bounded``), so a regression fails the test instead of exhausting the machine.
"""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import load_desired
from orchestrator.manifest import source

from tests.manifest.hostile import check_refused, load_bounded


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """Level k holds ``width`` aliases of level k-1: ``width**levels`` strings once expanded."""
    lines = ['vars:', '  a0: &a0 "lol"']
    for i in range(1, levels + 1):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"  a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def first_level_over_budget(width: int = 9) -> int:
    """Line of the first level of billion_laughs() that expands past MAX_VALUES."""
    size, level = 1, 0
    while size <= source.MAX_VALUES:
        size, level = 1 + width * size, level + 1
    return level + 2


def service(extra: str) -> str:
    return "kind: Service\nname: web\nimage: {from: scratch}\n" + extra


BOMBS = {
    # CVE-2019-11253 style: ~600 bytes that expand to 9**9 strings
    "alias expansion": (billion_laughs(), first_level_over_budget(), "aliases"),
    # an anchor used inside itself
    "recursive alias": (service("deploy: &d\n  env: *d\n"), 4, "recursive"),
    # deep flow nesting: a RecursionError traceback before
    "nesting depth": (service("deploy: {env: " + "[" * 20000 + "]" * 20000 + "}\n"), 4, "nest"),
    # block nesting, each level one more indent
    "block nesting": (service("deploy:\n" + "".join("  " * (i + 1) + f"k{i}:\n" for i in range(200))
                              + "  " * 201 + "v\n"), source.MAX_DEPTH + 4, "nest"),
    # a 5000-digit integer: a ValueError traceback before (Python's int/str limit)
    "integer length": (service("deploy:\n  keep_releases: " + "9" * 5000 + "\n"), 5, "digits"),
    "hex integer length": (service("deploy:\n  keep_releases: 0x" + "f" * 5000 + "\n"), 5, "digits"),
    # one scalar far larger than any manifest value
    "scalar size": (service('deploy:\n  env: {BIG: "' + "x" * (source.MAX_SCALAR + 1) + '"}\n'), 5, "scalar"),
    # a document larger than any manifest
    "document size": (service("#" + "x" * source.MAX_FILE_BYTES + "\n"), None, "bytes"),
    # many small values that stay under the file size
    "value count": (service("deploy:\n  env: [" + "0," * (source.MAX_VALUES + 10) + "]\n"),
                    None, "values"),
}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Every bomb loaded once, in one bounded child."""
    cases = {}
    for i, (name, (text, _, _)) in enumerate(sorted(BOMBS.items())):
        directory = tmp_path_factory.mktemp(f"bomb{i}")
        (directory / "bomb.yaml").write_text(text)
        cases[name] = directory
    return load_bounded(cases)


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused_located(answers, name):
    text, line, words = BOMBS[name]
    answer = check_refused(answers[name])
    message = answer["error"]
    assert message.split(":")[0].endswith("bomb.yaml"), message
    assert words in message, message
    if line is not None:
        assert answer["line"] == line, message


def test_limits_are_roomy_for_real_manifests(tmp_path):
    """What a real manifest does stays allowed: anchors reused a few times, a long env value."""
    text = 'vars:\n  base: &env {A: "%s", B: 12345678901234567890}\n  again: [*env, *env]\n' % ("y" * 10000)
    text += service("deploy:\n  env: *env\n")
    (tmp_path / "ok.yaml").write_text(text)
    d = load_desired(str(tmp_path), {})
    assert d.services["web"].deploy.env["A"] == "y" * 10000


def test_anchors_reused_within_budget(tmp_path):
    refs = ", ".join(["*h"] * 50)
    text = ("kind: Fleet\nname: f\nhosts:\n  - &h {name: a, address: 10.0.0.1}\n"
            "vars:\n  many: [" + refs + "]\n")
    (tmp_path / "f.yaml").write_text(text)
    d = load_desired(str(tmp_path), {})
    assert len(d.vars["many"]) == 50


def test_bad_value_in_template_output_is_located(tmp_path):
    """A rendered value that is a 5000-digit number is refused where it sits, not a traceback."""
    (tmp_path / "m.yaml").write_text(service("deploy:\n  keep_releases: \"{{ '9' * 5000 }}\"\n"))
    with pytest.raises(ManifestError) as err:
        load_desired(str(tmp_path), {})
    assert err.value.line == 5 and "keep_releases" in str(err.value)


def test_endless_file_is_refused(tmp_path):
    """A manifest that is a link to /dev/zero is read only up to the limit."""
    (tmp_path / "zero.yaml").symlink_to("/dev/zero")
    answer = check_refused(load_bounded({"zero": tmp_path})["zero"])
    assert "zero.yaml" in answer["error"] and "bytes" in answer["error"], answer
