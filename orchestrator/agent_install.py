"""Bootstrap on a host: the agent file (by digest) and its supervisor (`serve`), kept running.

On a host with systemd, a unit `orch-agent.service` runs `serve`; elsewhere (lab hosts, hosts
without systemd) `serve` is started detached. Upgrading the agent restarts only `serve`:
containers are run detached by the OCI runtime and keep serving.
"""
from __future__ import annotations

from typing import Optional, Tuple

from orchestrator.agent_client import AGENT_DIR, AgentClient, install_agent
from orchestrator.errors import AgentError
from orchestrator.ssh import SSHConnection

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
    return ensure_agent_info(conn, local_pyz, digest)[0]


def ensure_agent_info(conn: SSHConnection, local_pyz: str, digest: str) -> Tuple[AgentClient, dict]:
    """`ensure_agent`, also returning the agent's `info` answer (one round trip saved)."""
    installed = install_agent(conn, local_pyz, digest)
    client = AgentClient(conn, installed.path)
    info = client.info()
    missing = []
    if not info.get("runtime"):
        missing.append("runc (or crun)")
    if not info.get("nft"):
        missing.append("nftables")
    if missing:
        raise AgentError(f"host lacks {' and '.join(missing)}", host=conn.target.name,
                         hint="install them there: apt-get install runc nftables")
    serve_pid: Optional[int] = info.get("serve_pid")
    if info.get("agent_digest") not in (None, digest):
        raise AgentError(f"agent at {installed.path} reports digest {info.get('agent_digest')}, expected {digest}",
                         host=conn.target.name)
    if serve_pid and not _serve_runs(conn, serve_pid, installed.path):
        conn.run(["kill", str(serve_pid)])            # an older agent: replace the supervisor only
        serve_pid = None
    if not serve_pid:
        _start_serve(conn, installed.path)
    return client, info


def _serve_runs(conn: SSHConnection, pid: int, agent_path: str) -> bool:
    res = conn.run(["cat", f"/proc/{pid}/cmdline"])
    return res.exit_code == 0 and agent_path.encode() in res.stdout


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
