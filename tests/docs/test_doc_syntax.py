"""Fast checks of the documented commands (no lab): how they are found, and that each parses."""
import os

import pytest

from tests.docs.doccommands import (REPO, all_commands, check_syntax, example_commands, example_dirs,
                                    header_commands, judge, make_command, orch_invocations,
                                    readme_commands, split_comment)


@pytest.mark.parametrize("line, code, comment", [
    ("orch lab up", "orch lab up", None),
    ("orch lab up   # 3 hosts", "orch lab up", "3 hosts"),
    ("echo 'a # b'  # c", "echo 'a # b'", "c"),
    ('echo "a #b" x#y # z', 'echo "a #b" x#y', "z"),
    ("# only a comment", "", "only a comment"),
])
def test_split_comment(line, code, comment):
    assert split_comment(line) == (code, comment)


def test_markers():
    cmd = make_command("f:1", "orch apply x --var v=broken   # exit 11; prints halted; the canary stops")
    assert (cmd.code, cmd.exit, cmd.prints, cmd.syntax_only) == ("orch apply x --var v=broken", 11, ("halted",), False)
    assert make_command("f:2", "orch apply examples/pi-fleet  # not on the lab").syntax_only


def test_readme_blocks_of_the_tour_only():
    text = "## The two commands\n```sh\n.ci/setup\n```\n## The lab fleet\n```sh\n# note\norch lab up\n```\n" \
           "```yaml\nkind: Fleet\n```\n## A tour\n```\noutput\n```\n```sh\norch plan  # prints x\n```\n"
    assert [(c.source, c.code, c.prints) for c in readme_commands(text)] == [
        ("README.md:8", "orch lab up", ()), ("README.md:18", "orch plan", ("x",))]


def test_header_commands_follow_try_it():
    text = "# Intro\n#   not a command\n# Try it:\n#   orch apply d\n#   orch status d  # prints ok\n" \
           "# prose ends it\n#   orch not-this\nkind: Service\n"
    assert [(c.source, c.code) for c in header_commands(text, "x.yaml")] == [
        ("x.yaml:4", "orch apply d"), ("x.yaml:5", "orch status d")]


def test_orch_invocations():
    assert orch_invocations("A=1 orch plan d && .venv/bin/orch apply d | tail -1; echo") == [
        ["plan", "d"], ["apply", "d"]]


def test_judge():
    cmd = make_command("f:1", "x  # prints ok")
    assert judge(cmd, 0, "all ok\n") == []
    assert judge(cmd, 1, "nope") == ["exited 1, expected 0", "did not print 'ok'"]


@pytest.mark.parametrize("directory", example_dirs(), ids=lambda p: p.name)
def test_every_example_says_what_to_try(directory):
    assert example_commands(directory), f"{directory.name}: no '# Try it' commands in a header comment"


def test_every_documented_command_parses(monkeypatch):
    """bash -n, the real orch parser, and the manifests each command names load with their inputs
    (with the environment the earlier `export` lines give). A promised failure is parsed only."""
    env = {}
    seen = 0
    monkeypatch.chdir(REPO)
    for cmd in all_commands():
        if cmd.code.startswith("export "):
            key, _, value = cmd.code[len("export "):].partition("=")
            env[key] = value
        load_env = env if cmd.exit == 0 else None
        problem = check_syntax(cmd, REPO, load_env)
        assert problem is None, f"{cmd}\n  {problem}"
        seen += 1
    assert seen >= 20
