"""The ``orch`` command line: parses arguments and hands each verb to its command module.

Every command module exposes ``HELP`` (one line), ``EXAMPLES`` (command lines that the parser
accepts, shown by ``--help``; ``tests/test_cli.py`` holds every command to it),
``add_arguments(parser)`` and ``run(args) -> int``. This file is the only place that turns an ``OrchError`` into
one printed line and an exit code.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from typing import List, Optional

from orchestrator import __version__
from orchestrator.errors import OrchError

# verb -> module implementing it (imported lazily so `orch --help` stays fast)
COMMANDS = {
    "lab": "orchestrator.commands.lab",
    "build": "orchestrator.commands.build",
    "push": "orchestrator.commands.push",
    "plan": "orchestrator.commands.plan",
    "apply": "orchestrator.commands.apply",
    "status": "orchestrator.commands.status",
    "hosts": "orchestrator.commands.hosts",
    "rollback": "orchestrator.commands.rollback",
    "logs": "orchestrator.commands.logs",
    "audit": "orchestrator.commands.audit",
    "volumes": "orchestrator.commands.volumes",
    "exec": "orchestrator.commands.exec",
    "remove": "orchestrator.commands.remove",
}


def _load(module_name: str):
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name:
            return None
        raise


def command_of(argv: List[str]) -> Optional[str]:
    """The command ``argv`` runs, when it names one and asks for no top-level help."""
    for a in argv:
        if a in ("-h", "--help"):
            return None
        if not a.startswith("-"):
            return a if a in COMMANDS else None
    return None


def build_parser(only: Optional[str] = None) -> argparse.ArgumentParser:
    """Every command's parser, or ``only`` that one's: a command does not import and build the
    other twelve (~15 ms of every start); help and mistakes get the whole list."""
    names = {only: COMMANDS[only]} if only in COMMANDS else COMMANDS
    modules = {verb: _load(name) for verb, name in names.items()}
    modules = {verb: m for verb, m in modules.items() if m is not None}
    parser = argparse.ArgumentParser(
        prog="orch",
        description="Deploy services as immutable containers to a fleet of hosts over SSH.",
        epilog=_examples_text(m.EXAMPLES[0] for m in modules.values() if getattr(m, "EXAMPLES", ())),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"orch {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for verb, module in modules.items():
        p = sub.add_parser(verb, help=module.HELP, description=module.HELP,
                           epilog=_examples_text(getattr(module, "EXAMPLES", ())),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def _examples_text(lines) -> Optional[str]:
    lines = list(lines)
    return "examples:\n" + "\n".join(f"  {line}" for line in lines) if lines else None


# commands whose words after `--` are a command line of their own (`orch exec SVC -- CMD ...`)
PASSTHROUGH = ("exec",)


def split_passthrough(argv: List[str]):
    """(orch's own words, the words after the first `--`, or None) for a passthrough command."""
    verb = next((a for a in argv if not a.startswith("-")), None)
    if verb in PASSTHROUGH and "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, None


def main(argv: Optional[List[str]] = None) -> int:
    own, rest = split_passthrough(list(sys.argv[1:] if argv is None else argv))
    parser = build_parser(command_of(own))
    args = parser.parse_args(own)
    if rest is not None:
        args.argv_after = rest
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except OrchError as err:
        if args.debug:
            raise
        print(f"orch: error: {err}", file=sys.stderr)
        cause = err.__cause__
        if cause is not None and str(cause) and str(cause) not in str(err):
            print(f"  caused by: {type(cause).__name__}: {cause}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:          # `orch ... | head`: the reader left, not an error of ours
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except KeyboardInterrupt:
        print("orch: interrupted", file=sys.stderr)
        return 130


def entry() -> None:
    """The `orch` command: `main`, then leave at once. Output is flushed and the exit code
    kept, but the interpreter is not torn down (freeing every module and object took 60-90 ms
    after a one-host apply had finished, 10-15 % of the whole command). Everything a command
    starts has ended or been let go (agent sessions end on their own) before `main` returns."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):       # a reader that left (`orch ... | head`)
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
