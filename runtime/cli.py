"""Command line of the agent: ``python3 agent.pyz [--root DIR] [--run DIR] VERB [ARGS]``.

Reads the request (JSON) from stdin where the verb takes one, prints one JSON object, exits
with a stable code; errors are ``{"error": {"code", "message", ...}}`` on stdout.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional

from runtime import protocol
from runtime.errors import AgentFailure, BadRequest
from runtime.layout import Layout


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="orch-agent", description="orch host agent")
    p.add_argument("--root", default=protocol.DEFAULT_ROOT)
    p.add_argument("--run", default=protocol.DEFAULT_RUN)
    sub = p.add_subparsers(dest="verb", metavar="VERB")
    for verb in ("info", "have", "observe", "receive", "apply", "status", "gc", "lock", "unlock", "audit"):
        sub.add_parser(verb)
    lg = sub.add_parser("logs")
    lg.add_argument("service")
    lg.add_argument("--tail", type=int, default=100)
    lg.add_argument("--follow", action="store_true")
    rb = sub.add_parser("rollback")
    rb.add_argument("service")
    rb.add_argument("--to", default=None)
    rb.add_argument("--who", default="unknown")
    rm = sub.add_parser("remove")
    rm.add_argument("service")
    rm.add_argument("--who", default="unknown")
    sub.add_parser("session", help="answer framed requests on stdin until EOF (runtime/session.py)")
    sv = sub.add_parser("serve")
    sv.add_argument("--daemon", action="store_true",
                    help="start detached, print {pid, pidfile} and return")
    return p


def _request(stdin) -> dict:
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


def _log(msg: str) -> None:
    sys.stderr.write(msg + "\n")


def dispatch(args, stdin, stdout) -> int:
    from runtime import agent
    layout = Layout(args.root, args.run)
    v = args.verb
    if v == "session":
        from runtime import session
        return session.run_session(_session_dispatch(layout), stdin.buffer if hasattr(stdin, "buffer") else stdin,
                                   stdout.buffer if hasattr(stdout, "buffer") else stdout)
    if v == "serve":
        from runtime import supervisor
        if args.daemon:
            body = supervisor.start_daemon(layout, sys.argv[0])
        else:
            layout.ensure()
            return supervisor.run_serve(layout)
    elif v == "receive":
        body = agent.verb_receive(layout, stdin.buffer if hasattr(stdin, "buffer") else stdin)
    elif v == "logs":
        agent.verb_logs(layout, args.service, args.tail, args.follow, stdout)
        return protocol.EXIT_OK
    elif v == "remove":
        body = agent.verb_remove(layout, args.service, args.who, _log, _request(stdin).get("lock"))
    elif v == "rollback":
        body = agent.verb_rollback(layout, args.service, args.to, args.who, _log,
                                   _request(stdin).get("lock"))
    else:
        req = _request(stdin) if protocol.VERBS.get(v) else {}
        fn = getattr(agent, "verb_" + v)
        body = fn(layout, req, _log) if v == "apply" else fn(layout, req)
    stdout.write(json.dumps(body, sort_keys=True) + "\n")
    stdout.flush()
    if v in ("apply", "rollback", "remove") and \
            not all(s.get("ok") for s in body["services"].values()):
        return protocol.EXIT_PARTIAL
    return protocol.EXIT_OK


def _session_dispatch(layout: Layout):
    """(verb, request, stream) -> (exit code, body) for the session: the same verb functions
    as the command line, with arguments spelled as request keys."""
    from runtime import agent

    def one(verb: str, req: dict, stream) -> tuple:
        try:
            if verb == "receive":
                body = agent.verb_receive(layout, stream)
            elif verb in ("rollback", "remove"):
                service, who = str(req.get("service") or ""), str(req.get("who") or "unknown")
                body = agent.verb_rollback(layout, service, req.get("to"), who, _log, req.get("lock")) \
                    if verb == "rollback" else agent.verb_remove(layout, service, who, _log, req.get("lock"))
            elif verb == "apply":
                body = agent.verb_apply(layout, req, _log)
            elif verb in protocol.VERBS and hasattr(agent, "verb_" + verb):
                body = getattr(agent, "verb_" + verb)(layout, req)
            else:
                return protocol.EXIT_USAGE, protocol.error_body(protocol.E_USAGE, f"unknown verb {verb!r}")
        except AgentFailure as exc:
            return exc.exit_code, exc.body()
        if verb in ("apply", "rollback", "remove") and not all(s.get("ok") for s in body["services"].values()):
            return protocol.EXIT_PARTIAL, body
        return protocol.EXIT_OK, body
    return one


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        if exc.code:
            print(json.dumps(protocol.error_body(protocol.E_USAGE, "bad arguments")))
            return protocol.EXIT_USAGE
        return 0
    if not args.verb:
        parser.print_help(sys.stderr)
        return protocol.EXIT_USAGE
    try:
        return dispatch(args, sys.stdin, sys.stdout)
    except AgentFailure as exc:
        print(json.dumps(exc.body(), sort_keys=True))
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # report, never a bare traceback on stdout
        import traceback
        traceback.print_exc(file=sys.stderr)
        print(json.dumps(protocol.error_body(protocol.E_INTERNAL,
                                             f"{type(exc).__name__}: {exc}")))
        return protocol.EXIT_ERROR
