"""The `orch` parser: every command, present and future, shows examples that the real parser accepts."""
import importlib
import shlex

import pytest

from orchestrator import cli


def _examples(verb):
    module = importlib.import_module(cli.COMMANDS[verb])
    return list(getattr(module, "EXAMPLES", ()))


@pytest.mark.parametrize("verb", sorted(cli.COMMANDS))
def test_every_command_has_examples_the_parser_accepts(verb):
    examples = _examples(verb)
    assert examples, f"{cli.COMMANDS[verb]} has no EXAMPLES"
    parser = cli.build_parser()
    for line in examples:
        words = shlex.split(line, comments=True)
        assert words[:2] == ["orch", verb], line
        own, _ = cli.split_passthrough(words[1:])  # `orch exec SVC -- CMD`: CMD is not orch's
        args = parser.parse_args(own)                # exits (SystemExit) on a bad example
        assert args.command == verb and callable(args._run)


@pytest.mark.parametrize("verb", sorted(cli.COMMANDS))
def test_command_help_shows_its_examples(verb, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([verb, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out
    for line in _examples(verb):
        assert line in out


def test_top_level_help_shows_an_example_per_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out
    for verb in cli.COMMANDS:
        assert _examples(verb)[0] in out


def test_a_broken_example_is_caught(capsys):
    """What the first test relies on: the real parser refuses a wrong example."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(shlex.split("apply manifests/ --no-such-flag"))


def test_the_orch_command_flushes_its_output_and_keeps_its_exit_code_when_it_leaves_at_once():
    """`entry` leaves with os._exit (no interpreter teardown): whatever `main` wrote to a pipe
    must all arrive, and its exit code must stay."""
    import subprocess
    import sys

    code = ("import sys; from orchestrator import cli; "
            "cli.main = lambda: (sys.stdout.write('x' * 200000 + 'END'), sys.stderr.write('why'), 3)[-1]; "
            "cli.entry()")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert res.returncode == 3
    assert len(res.stdout) == 200003 and res.stdout.endswith("END")
    assert res.stderr == "why"


def test_the_orch_script_runs_entry():
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["orch"] == "orchestrator.cli:entry"


def test_a_command_builds_and_imports_only_its_own_parser():
    import subprocess
    import sys

    code = ("import sys\nfrom orchestrator import cli\n"
            "p = cli.build_parser(cli.command_of(['--debug', 'status', '--json']))\n"
            "a = p.parse_args(['--debug', 'status', '--json'])\n"
            "print(a.command, a.debug, a.json, sorted(m for m in sys.modules if m.startswith('orchestrator.commands.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split(" ", 3)[:3] == ["status", "True", "True"]
    assert "orchestrator.commands.status" in out and "orchestrator.commands.lab" not in out
    assert cli.command_of(["apply", "manifests/"]) == "apply"
    assert cli.command_of(["--help", "apply"]) is None            # the listing of every command
    assert cli.command_of(["nope"]) is None and cli.command_of([]) is None


def test_an_unknown_command_is_refused_with_the_list_of_every_command(capsys):
    with pytest.raises(SystemExit):
        cli.main(["nope"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nope'" in err and "apply" in err and "volumes" in err
