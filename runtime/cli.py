"""Command line of the agent: ``python3 agent.pyz [--root DIR] [--run DIR] VERB [ARGS]``.

Every verb has one shape, listed in ``VERBS``: a JSON request in (stdin, or the verb's
command-line arguments turned into the same request), one JSON answer out, a stable exit code;
errors are ``{"error": {"code", "message", ...}}`` on stdout. ``dispatch(verb, layout, request,
io)`` is the one entry point, so a session that reads many framed requests over one channel
dispatches through the same table. Two verbs stream instead of answering JSON: ``receive``
reads frames from stdin, ``logs`` writes raw text.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from runtime import protocol
from runtime.errors import AgentFailure, BadRequest, UnknownVerb, Usage
from runtime.layout import Layout


@dataclass
class Io:
    """What a verb may use besides its request: the raw streams and a log line writer."""
    stdin: Any
    stdout: Any
    log: Callable[[str], None]
    argv0: str = ""


@dataclass(frozen=True)
class Verb:
    name: str
    run: Callable[[Layout, Dict[str, Any], Io], Optional[Dict[str, Any]]]
    stdin: str = "json"          # json: the request | stream: raw input (receive) | none
    reads_only: bool = True      # changes nothing on the host (plan/status/... use only these)
    args: Tuple[Tuple[str, Dict[str, Any]], ...] = ()   # argv form of the request


def _agent():
    from runtime import agent
    return agent


def _serve(layout: Layout, req: dict, io: Io) -> Optional[dict]:
    from runtime import supervisor
    if req.get("daemon"):
        return supervisor.start_daemon(layout, io.argv0)
    layout.ensure()
    raise _Exit(supervisor.run_serve(layout))


def _logs(layout: Layout, req: dict, io: Io) -> None:
    _agent().verb_logs(layout, _service(req), int(req.get("tail", 100)), bool(req.get("follow")),
                       io.stdout)


def _exec(layout: Layout, req: dict, io: Io) -> None:
    command = [c for c in (req.get("command") or []) if c != "--"] if req.get("command") else []
    raise _Exit(_agent().verb_exec(layout, _service(req), command, bool(req.get("tty"))))


def _service(req: dict) -> str:
    s = req.get("service")
    if not isinstance(s, str) or not s:
        raise BadRequest('expected {"service": NAME, ...}')
    return s


_WHO = ("--who", {"dest": "who", "default": "unknown"})
_SERVICE = ("service", {})

VERBS: Dict[str, Verb] = {v.name: v for v in (
    Verb("info", lambda l, r, io: _agent().verb_info(l, r)),
    Verb("have", lambda l, r, io: _agent().verb_have(l, r)),
    Verb("observe", lambda l, r, io: _agent().verb_observe(l, r)),
    Verb("status", lambda l, r, io: _agent().verb_status(l, r)),
    Verb("audit", lambda l, r, io: _agent().verb_audit(l, r)),
    Verb("volumes", lambda l, r, io: _agent().verb_volumes(l, r)),
    Verb("logs", _logs, stdin="none",
         args=(_SERVICE, ("--tail", {"type": int, "default": 100}),
               ("--follow", {"action": "store_true"}))),
    Verb("exec", _exec, stdin="none", reads_only=False,
         args=(_SERVICE, ("--tty", {"action": "store_true"}),
               ("command", {"nargs": "..."}))),         # argparse.REMAINDER
    Verb("receive", lambda l, r, io: _agent().verb_receive(
        l, io.stdin.buffer if hasattr(io.stdin, "buffer") else io.stdin),
        stdin="stream", reads_only=False),
    Verb("apply", lambda l, r, io: _agent().verb_apply(l, r, io.log), reads_only=False),
    Verb("prepare", lambda l, r, io: _agent().verb_prepare(l, r, io.log), reads_only=False),
    Verb("rollback", lambda l, r, io: _agent().verb_rollback(
        l, _service(r), r.get("to"), str(r.get("who") or "unknown"), io.log, r.get("lock")),
        reads_only=False, args=(_SERVICE, ("--to", {"default": None}), _WHO)),
    Verb("remove", lambda l, r, io: _agent().verb_remove(
        l, _service(r), str(r.get("who") or "unknown"), io.log, r.get("lock")),
        reads_only=False, args=(_SERVICE, _WHO)),
    Verb("gc", lambda l, r, io: _agent().verb_gc(l, r), reads_only=False),
    Verb("finish", lambda l, r, io: _agent().verb_finish(l, list(r.get("services") or []), io.log),
         reads_only=False, args=(("services", {"nargs": "*"}),)),
    Verb("lock", lambda l, r, io: _agent().verb_lock(l, r), reads_only=False),
    Verb("unlock", lambda l, r, io: _agent().verb_unlock(l, r), reads_only=False),
    Verb("serve", _serve, stdin="none", reads_only=False,
         args=(("--daemon", {"action": "store_true"}),)),
    Verb("session", lambda l, r, io: _session(l, io), stdin="stream", reads_only=False),
)}
PARTIAL_VERBS = ("apply", "rollback", "remove")   # exit EXIT_PARTIAL when a service failed


def _session(layout: Layout, io: Io) -> None:
    stdin = io.stdin.buffer if hasattr(io.stdin, "buffer") else io.stdin
    stdout = io.stdout.buffer if hasattr(io.stdout, "buffer") else io.stdout
    raise _Exit(answer_session(layout, stdin, stdout, io.log, io.argv0))


def answer_session(layout: Layout, stdin, stdout, log: Callable[[str], None], argv0: str) -> int:
    """Answer framed requests until EOF (runtime/session.py), each through ``dispatch``: the
    same table, the same shapes and codes as one verb per process. Over the SSH channel of
    ``python3 AGENT session``, or a socket ``serve`` handed to a forked child (runtime/door.py)."""
    from runtime import session
    warm: list = []
    changed: list = []

    def one(verb: str, request: Dict[str, Any], stream) -> Tuple[int, Dict[str, Any]]:
        code, body = dispatch(verb, layout, request, Io(stream, None, log, argv0))
        if verb == "lock" and code == protocol.EXIT_OK and not warm:
            warm.append(_start_warm_up())
        if verb in protocol.MUTATING and not changed:
            changed.append(verb)
        return code, body if body is not None else {}
    code = session.run_session(one, stdin, stdout)
    if changed:     # the caller has gone: the next command's first look finds the snapshot
        write_snapshot_now(layout)
    return code


def write_snapshot_now(layout: Layout) -> None:
    """serve's observe snapshot (runtime/snapshot.py), written now rather than at serve's next
    tick (up to a second away), after a change: a command right after this one reads it
    instead of opening a session. Skipped while another process changes the host."""
    try:
        from runtime import agent, supervisor
        supervisor.run_write_snapshot(agent.make_host(layout))
    except Exception:  # noqa: BLE001 - serve writes it within a second anyway
        pass


CHANGE_MODULES = ("runtime.host", "runtime.executors", "runtime.reconcile", "runtime.admission",
                  "runtime.gc", "runtime.spec", "runtime.container", "runtime.network",
                  "runtime.bundle", "runtime.layers", "runtime.unpack", "runtime.health",
                  "runtime.snapshot")


def _start_warm_up():
    """A session that took the lock is about to change the host: import what apply needs
    (about 0.1 s of imports, the planner's and executors' dataclasses most) and open the
    nftables context (its first command reads the ruleset into the library's cache, ~2.5 ms)
    in a thread while the orchestrator ships and earlier waves run, not when the apply
    arrives."""
    import importlib
    import threading

    def load() -> None:
        for name in CHANGE_MODULES:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 - the verb that needs it reports it
                return
        try:
            from runtime import network
            network.table_exists()      # a read; the library refreshes its cache if it changes
        except Exception:  # noqa: BLE001 - the verb that needs nftables reports it
            pass
    t = threading.Thread(target=load, name="warm-up", daemon=True)
    t.start()
    return t


class _Exit(Exception):
    def __init__(self, code: int):
        self.code = code


def dispatch(verb: str, layout: Layout, request: Dict[str, Any], io: Io) -> Tuple[int, Optional[dict]]:
    """Run one verb: (exit code, JSON answer or None when the verb wrote its own output).
    Agent failures become their error body and exit code."""
    v = VERBS.get(verb)
    try:
        if v is None:
            raise UnknownVerb(f"unknown verb {verb!r} (this agent speaks protocol "
                              f"{protocol.PROTOCOL_VERSION}: {', '.join(sorted(VERBS))})",
                              protocol=protocol.PROTOCOL_VERSION)
        body = v.run(layout, request, io)
    except _Exit as done:
        return done.code, None
    except AgentFailure as exc:
        return exc.exit_code, exc.body()
    if body is None:
        return protocol.EXIT_OK, None
    if verb in PARTIAL_VERBS and not all(s.get("ok") for s in body["services"].values()):
        return protocol.EXIT_PARTIAL, body
    return protocol.EXIT_OK, body


def _read_request(stdin) -> dict:
    raw = stdin.read()
    if not raw.strip():
        return {}
    try:
        req = json.loads(raw)
    except ValueError as exc:
        raise BadRequest(f"request is not JSON: {exc}") from None
    if not isinstance(req, dict):
        raise BadRequest("request must be a JSON object")
    return req


def _split_top(argv: List[str]) -> Tuple[str, str, Optional[str], List[str]]:
    """``[--root R] [--run R] VERB REST...`` -> (root, run, verb, rest), without argparse (it
    costs a start more than the rest of a read verb's imports)."""
    opts = {"--root": protocol.DEFAULT_ROOT, "--run": protocol.DEFAULT_RUN}
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        name, eq, value = argv[i].partition("=")
        if name not in opts or (not eq and i + 1 >= len(argv)):
            raise Usage("usage: orch-agent [--root DIR] [--run DIR] VERB [ARGS]")
        if not eq:
            i += 1
            value = argv[i]
        opts[name] = value
        i += 1
    verb = argv[i] if i < len(argv) else None
    return opts["--root"], opts["--run"], verb, argv[i + 1:]


def parse_argv(argv: List[str], stdin) -> Tuple[Layout, str, Dict[str, Any]]:
    """``[--root R] [--run R] VERB [ARGS]`` -> (layout, verb, request). Arguments and a JSON
    request on stdin are two spellings of the same request (stdin wins where both say)."""
    root, run, verb, rest = _split_top(argv)
    layout = Layout(root, run)
    if not verb:
        raise Usage("usage: orch-agent [--root DIR] [--run DIR] VERB [ARGS]; verbs: "
                         + ", ".join(sorted(VERBS)))
    v = VERBS.get(verb)
    if v is None:
        return layout, verb, {}
    req: Dict[str, Any] = {}
    if v.args or rest:
        import argparse
        sub = argparse.ArgumentParser(prog=f"orch-agent {v.name}", add_help=False)
        for name, kw in v.args:
            sub.add_argument(name, **kw)
        try:
            req = {k: x for k, x in vars(sub.parse_args(rest)).items()}
        except SystemExit:
            raise Usage(f"bad arguments for {v.name}: {' '.join(rest)}") from None
    if v.stdin == "json":
        req.update(_read_request(stdin))
    return layout, v.name, req


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        try:
            layout, verb, req = parse_argv(argv, sys.stdin)
        except AgentFailure as exc:
            print(json.dumps(exc.body(), sort_keys=True))
            return exc.exit_code
        code, body = dispatch(verb, layout, req, Io(sys.stdin, sys.stdout, _log, sys.argv[0]))
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # report, never a bare traceback on stdout
        import traceback
        traceback.print_exc(file=sys.stderr)
        print(json.dumps(protocol.error_body(protocol.E_INTERNAL,
                                             f"{type(exc).__name__}: {exc}")))
        return protocol.EXIT_ERROR
    if body is not None:
        sys.stdout.write(json.dumps(body, sort_keys=True) + "\n")
        sys.stdout.flush()
    return code
