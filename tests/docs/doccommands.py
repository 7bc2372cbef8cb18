"""The shell commands the documentation shows, as data: where each is written and what it promises.

Sources, in the order a newcomer reads them:
- README.md: every ```sh block of the sections "The lab fleet" and "A tour" (the tour). The block
  of "The two commands" is CI's own (`.ci/run` runs it) and installs the machine.
- examples/*/*.yaml: the lines of a header comment after a line starting with "# Try it", each
  written as "#   COMMAND" (indented); a line that is not indented ends the list.

A command's trailing comment may promise something, in clauses separated by ";":
  prints TEXT        what it shows (stdout and stderr) contains TEXT
  exit N             it exits with N (default: 0)
  not on the lab     it needs real machines (Pis): checked for syntax only
Anything else in the comment is prose for the reader.
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

REPO = Path(__file__).resolve().parents[2]
TOUR_SECTIONS = ("The lab fleet", "A tour")
NOT_ON_THE_LAB = "not on the lab"


@dataclass(frozen=True)
class Command:
    source: str                  # "README.md:43"
    group: str                   # the document it belongs to: "README.md#A tour", "examples/canary"
    line: str                    # as written (with its comment)
    code: str                    # the shell code without the trailing comment
    exit: int = 0
    prints: Tuple[str, ...] = ()
    syntax_only: bool = False

    def __str__(self) -> str:
        return f"{self.source}: {self.line}"


def split_comment(line: str) -> Tuple[str, Optional[str]]:
    """(code, comment) of a shell line; a # starts a comment only at the start of a word."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
            elif ch == "\\" and quote == '"':
                continue
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), None


def make_command(source: str, line: str, group: str = "") -> Command:
    line = line.strip()
    code, comment = split_comment(line)
    exit_code, prints, syntax_only = 0, [], False
    for clause in (comment or "").split(";"):
        clause = clause.strip()
        if clause == NOT_ON_THE_LAB:
            syntax_only = True
        elif re.fullmatch(r"exit \d+", clause):
            exit_code = int(clause.split()[1])
        elif clause.startswith("prints "):
            prints.append(clause[len("prints "):].strip())
    return Command(source, group or source.split(":")[0], line, code, exit_code, tuple(prints), syntax_only)


def readme_commands(text: str, file: str = "README.md") -> List[Command]:
    out: List[Command] = []
    section, in_sh = None, False
    for n, raw in enumerate(text.splitlines(), 1):
        if raw.startswith("## "):
            section = raw[3:].strip()
        if raw.startswith("```"):
            in_sh = (not in_sh) and raw.strip() == "```sh"
            continue
        if in_sh and section in TOUR_SECTIONS and raw.strip() and not raw.lstrip().startswith("#"):
            out.append(make_command(f"{file}:{n}", raw, f"{file}#{section}"))
    return out


def header_commands(text: str, file: str) -> List[Command]:
    """The commands of a manifest's header comment (the "# Try it" list)."""
    out: List[Command] = []
    trying = False
    for n, raw in enumerate(text.splitlines(), 1):
        if not raw.startswith("#"):
            break
        if raw.startswith("# Try it"):
            trying = True
            continue
        if trying:
            if not raw.startswith("#  "):
                trying = False
                continue
            out.append(make_command(f"{file}:{n}", raw[1:], os.path.dirname(file) or file))
    return out


def example_dirs(repo: Path = REPO) -> List[Path]:
    return sorted(p for p in (repo / "examples").iterdir() if p.is_dir())


def example_commands(directory: Path, repo: Path = REPO) -> List[Command]:
    out: List[Command] = []
    for path in sorted(directory.glob("*.yaml")):
        out += header_commands(path.read_text(), str(path.relative_to(repo)))
    return out


def all_commands(repo: Path = REPO) -> List[Command]:
    """README tour first, then each example in name order."""
    out = readme_commands((repo / "README.md").read_text())
    for d in example_dirs(repo):
        out += example_commands(d, repo)
    return out


# ---------------------------------------------------------------- syntax

def simple_commands(code: str) -> List[List[str]]:
    """The words of each simple command of a line (split at ;, &&, ||, |)."""
    lexer = shlex.shlex(code, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    out, words = [], []
    for tok in lexer:
        if tok and set(tok) <= set(";&|"):
            out.append(words)
            words = []
        else:
            words.append(tok)
    out.append(words)
    return [w for w in out if w]


def orch_invocations(code: str) -> List[List[str]]:
    """The argument lists of the `orch` calls in a line (`orch ...`, `.venv/bin/orch ...`)."""
    out = []
    for words in simple_commands(code):
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]                       # VAR=value orch ...
        if words and os.path.basename(words[0]) == "orch":
            out.append(words[1:])
    return out


def check_syntax(cmd: Command, cwd: Path, environ) -> Optional[str]:
    """None when the line is sound shell, each orch call parses and, unless ``environ`` is None,
    the manifests it names load and their inputs check out (nothing is built, no host contacted)."""
    import contextlib
    import io
    import subprocess

    from orchestrator.cli import build_parser, split_passthrough
    from orchestrator.commands._common import parse_vars
    from orchestrator.errors import OrchError
    from orchestrator.manifest.inputs import load_checked

    bash = subprocess.run(["bash", "-n", "-c", cmd.code], capture_output=True, text=True)
    if bash.returncode:
        return f"bash -n: {bash.stderr.strip()}"
    for argv in orch_invocations(cmd.code):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                args = build_parser().parse_args(split_passthrough(argv)[0])   # as main() does
        except SystemExit:
            return f"orch {' '.join(argv)}: {err.getvalue().strip().splitlines()[-1]}"
        if environ is not None and getattr(args, "directory", None):
            try:
                load_checked(str(cwd / args.directory), parse_vars(args.var), environ,
                             secrets=args.command in ("plan", "apply"))     # as the commands do
            except OrchError as exc:
                return f"orch {' '.join(argv)}: {exc}"
    return None


def judge(cmd: Command, exit_code: int, stdout: str) -> List[str]:
    """What a run broke of the command's promises."""
    problems = []
    if exit_code != cmd.exit:
        problems.append(f"exited {exit_code}, expected {cmd.exit}")
    for text in cmd.prints:
        if text not in stdout:
            problems.append(f"did not print {text!r}")
    return problems
