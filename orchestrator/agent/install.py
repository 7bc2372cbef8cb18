"""Bootstrap on a host: the agent file (by digest) and its supervisor (`serve`), kept running.

On a host with systemd, a unit `orch-agent.service` runs `serve`; elsewhere (lab hosts, hosts
without systemd) `serve` is started detached. Upgrading the agent restarts only `serve`:
containers are run detached by the OCI runtime and keep serving.
"""
from __future__ import annotations

from typing import Sequence, Tuple

from orchestrator.agent.client import AGENT_DIR, AgentClient, agent_path, install_agent
from orchestrator.agent.session import AgentSession, SessionGone
from orchestrator.errors import AgentError
from orchestrator.transport.ssh import SSHConnection

UNIT_PATH = "/etc/systemd/system/orch-agent.service"

# Starts `python3 AGENT serve` in its own session with stdio on a log file, then returns at once.
_DAEMONIZE = (
    "import os, sys\n"
    "agent, log = sys.argv[1], sys.argv[2]\n"
    "if os.fork():\n"
    "    sys.exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)\n"
    "null = os.open(os.devnull, os.O_RDONLY)\n"
    "os.dup2(null, 0); os.dup2(fd, 1); os.dup2(fd, 2)\n"
    "os.closerange(3, 1024)\n"
    "os.chdir('/')\n"
    "os.execvp('python3', ['python3', agent, 'serve'])\n"
)


def render_unit(agent_path: str) -> str:
    return "\n".join([
        "[Unit]",
        "Description=orch host agent (keeps the deployed containers true to their target)",
        "After=network-online.target",
        "StartLimitIntervalSec=0",    # a host alone in a barn keeps trying, however often it failed
        "",
        "[Service]",
        f"ExecStart=/usr/bin/python3 {agent_path} serve",
        "Restart=always",
        "RestartSec=2",
        "KillMode=process",          # stopping the agent never stops the containers
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def ensure_agent(conn: SSHConnection, local_pyz: str, digest: str) -> AgentClient:
    """Install the agent if its digest is new there, and make sure `serve` runs that agent."""
    return observe_host(conn, local_pyz, digest)[0]


def observe_host(conn: SSHConnection, local_pyz: str, digest: str,
                 digests: Sequence[str] = ()) -> Tuple[AgentClient, dict]:
    """One round trip in the steady state: the agent's `observe` (info, which of `digests` the
    host has, status), as the first request of an agent session that the returned client keeps
    for the rest of the command. The agent is installed first only where its file is missing,
    and its supervisor restarted only where it runs another agent file."""
    path = agent_path(digest)
    for attempt in (1, 2):
        session = AgentSession.open(conn, path)
        try:
            code, body = session.call("observe", {"digests": list(digests)}, timeout=120)
            break
        except SessionGone as exc:
            if session.exit_code == 127:
                raise AgentError("python3 is not installed on the host", host=conn.target.name,
                                 hint="install it there: apt-get install python3-minimal") from None
            if attempt == 1 and session.exit_code == 2 and "can't open file" in str(exc):
                install_agent(conn, local_pyz, digest)
                continue
            raise
    client = AgentClient(conn, path, session)
    body = client._answer("observe", code, body, "")
    _check_info(conn, client.path, digest, body["info"])
    return client, body


def _check_info(conn: SSHConnection, path: str, digest: str, info: dict) -> None:
    missing = []
    if not info.get("runtime"):
        missing.append("runc (or crun)")
    if not info.get("nft"):
        missing.append("nftables")
    if missing:
        raise AgentError(f"host lacks {' and '.join(missing)}", host=conn.target.name,
                         hint="install them there: apt-get install runc nftables")
    if info.get("agent_digest") not in (None, digest):
        raise AgentError(f"agent at {path} reports digest {info.get('agent_digest')}, expected {digest}",
                         host=conn.target.name)
    if info.get("serve_agent") == path:
        return
    if info.get("serve_pid"):
        conn.run(["kill", str(info["serve_pid"])])   # an older agent: replace the supervisor only
    _start_serve(conn, path)


def _start_serve(conn: SSHConnection, agent_path: str) -> None:
    has_systemd = conn.run(["test", "-d", "/run/systemd/system"]).exit_code == 0
    if has_systemd:
        unit = render_unit(agent_path).encode()
        res = conn.run(["tee", UNIT_PATH], input=unit)
        if res.exit_code == 0:
            for argv in (["systemctl", "daemon-reload"], ["systemctl", "enable", "orch-agent.service"],
                         ["systemctl", "restart", "orch-agent.service"]):
                step = conn.run(argv)
                if step.exit_code != 0:
                    raise AgentError(f"{' '.join(argv)}: {step.stderr.decode(errors='replace').strip()}",
                                     host=conn.target.name)
            return
    res = conn.run(["python3", "-c", _DAEMONIZE, agent_path, f"{AGENT_DIR}/serve.log"])
    if res.exit_code != 0:
        raise AgentError(f"cannot start the agent supervisor: {res.stderr.decode(errors='replace').strip()}",
                         host=conn.target.name)
