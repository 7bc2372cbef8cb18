"""Bootstrap on a host: the agent file (by digest) and its supervisor (`serve`), kept running.

On a host with systemd, a unit `orch-agent.service` runs `serve`; elsewhere (lab hosts, hosts
without systemd) `serve` is started detached. Upgrading the agent restarts only `serve`:
containers are run detached by the OCI runtime and keep serving.
"""
from __future__ import annotations

import posixpath
from dataclasses import field
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from orchestrator.agent.client import (AgentClient, AgentMissing, agent_path,
                                       check_versions, put_agent)
from orchestrator.agent.session import AgentSession, SessionGone
from orchestrator.errors import AgentError
from orchestrator.transport.ssh import SSHConnection
from runtime import door, platforms, protocol, snapshot
from runtime.records import Mutable, mutable

UNIT_PATH = "/etc/systemd/system/orch-agent.service"

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


@mutable
class HostView(Mutable):
    """What a host's agent says, read without changing anything there."""

    client: Optional[AgentClient]       # a read-only session on the agent that is there, if any
    answer: Optional[dict]              # its `observe` answer: {info, have, status}
    agent: str                          # current | other (another agent file) | missing
    facts: Dict[str, Any] = field(default_factory=dict)   # the launcher's, where ours is missing

    @property
    def platform(self) -> Optional[str]:
        if self.answer:
            return self.answer["info"].get("platform")
        return self.facts.get("platform") or (platforms.from_machine(self.facts["machine"])
                                              if self.facts.get("machine") else None)

    def would_install(self, digest: str) -> Optional[str]:
        """What `apply` would do to the agent here (None: nothing)."""
        name = f"orch-agent-{protocol.split_digest(digest)[:12]}"
        if self.agent == "current":
            return None
        if self.agent == "other":
            return f"upgrade the agent to {name} (now {posixpath.basename(self.client.path)[:12]})"
        return f"install the agent {name} and start its supervisor"


def read_host(conn: SSHConnection, digest: str, digests: Sequence[str] = (), *,
              allow_newer: bool = False) -> HostView:
    """Ask the host's agent for info, the blobs among ``digests`` it has, and its status, in one
    round trip where this orch's agent is there. Where it is not, ask the agent file that is
    there (the one `serve` runs, else the newest); where none is, report the host as it is.
    Installs nothing, starts nothing, takes no lock."""
    request = {"digests": list(digests)}
    path = agent_path(digest)
    session = AgentSession.open(conn, path)   # kept by the client for the rest of the command
    ours = AgentClient(conn, path, session, read_only=True, allow_newer=allow_newer)
    try:
        code, body = session.call("observe", request, timeout=120)
        return HostView(ours, ours._answer("observe", code, body, ""), "current")
    except SessionGone:
        if session.exit_code == 127:
            raise AgentError("python3 is not installed on the host", host=conn.target.name,
                             hint="install it there: apt-get install python3-minimal") from None
        if session.exit_code != protocol.EXIT_NO_AGENT:
            raise
    try:                # the launcher's facts, where the agent is missing (one more round trip)
        AgentClient(conn, path, read_only=True).call("observe", request, timeout=120)
        raise AgentError("the agent answered outside its session", host=conn.target.name)
    except AgentMissing as missing:
        facts = missing.facts
    found = [a for a, _ in sorted(facts.get("agents") or [], key=lambda a: a[1])]
    if not found:
        return HostView(None, None, "missing", facts)
    path = facts.get("serve_agent") if facts.get("serve_agent") in found else found[-1]
    other = AgentClient(conn, path, read_only=True, allow_newer=allow_newer)
    return HostView(other, other.call("observe", request, timeout=120), "other", facts)


def install_and_observe(conn: SSHConnection, local_pyz: str, digest: str,
                        digests: Sequence[str] = (), *, allow_downgrade: bool = False,
                        releases: Optional[Mapping[str, str]] = None) -> Tuple[AgentClient, dict]:
    """For commands that change hosts (apply, rollback): read the host; where this orch's agent
    is missing, install it (refusing to replace a newer one unless ``allow_downgrade``); make
    sure `serve` runs it. One round trip in the steady state.

    With ``releases`` (apply's first look, which it makes again under its lock before it
    changes anything; service -> release wanted there): a fresh snapshot that `serve` keeps,
    written by this very agent, is the answer when `serve` itself gave it at its door (so it
    runs), or when it shows those releases serving (a no-op, however it was read). No agent
    process starts for it; the client opens its session when the command first asks the host
    for more (its lock, when something changes there or elsewhere in the fleet)."""
    if releases is not None:
        path = agent_path(digest)
        seen, at_door = read_snapshot(conn, path, digest, digests, door_too=True)
        if seen is not None and (at_door or all(serving(seen["status"], name, rel)
                                                for name, rel in releases.items())):
            client = AgentClient(conn, path, lazy_session=True)
            client.check(seen["info"])
            _check_info(conn, path, digest, seen["info"])
            return client, seen
    view = read_host(conn, digest, digests, allow_newer=True)
    if view.agent != "current":
        if view.client is not None and view.client.checked is not None:
            check_versions(conn.target.name, view.client.checked, allow_newer=allow_downgrade)
        python = view.facts.get("python") or [0]
        put_agent(conn, local_pyz, digest, python)
        view = read_host(conn, digest, digests, allow_newer=True)
    client = AgentClient(conn, agent_path(digest), view.client.session)   # the same session
    client.check(view.answer["info"])
    _check_info(conn, client.path, digest, view.answer["info"])
    return client, view.answer


def serving(status: Mapping, service: str, release: str) -> bool:
    """`release` of `service` runs, has not been restarting and is not unhealthy."""
    s = (status.get("services") or {}).get(service) or {}
    return s.get("release") == release and s.get("state") == "running" and not s.get("restarts") \
        and s.get("health") != "unhealthy"


def install_agent_and_serve(conn: SSHConnection, local_pyz: str, digest: str) -> AgentClient:
    """Install the agent if its digest is new there, and make sure `serve` runs that agent."""
    return install_and_observe(conn, local_pyz, digest)[0]


def read_snapshot(conn: SSHConnection, path: str, digest: str, digests: Sequence[str],
                  door_too: bool = False):
    """The observe answer from serve's snapshot (runtime/snapshot.py), if it is fresh and was
    written by this very agent; `have` narrowed to `digests`. None otherwise. ``door_too``:
    (answer, whether serve gave it at its door, so that serve runs now) instead."""
    out = conn.read_door(door.request("snapshot"))       # serve answers: no process started
    at_door = out is not None
    if out is None:
        res = conn.run_shared(["cat", posixpath.join(protocol.DEFAULT_RUN, snapshot.NAME), "/proc/uptime"],
                              timeout=30)
        out = res.stdout if res.exit_code == 0 else b""
    seen = snapshot.parse_read(out)
    if seen is not None:
        info = seen.get("info") or {}
        if info.get("agent_digest") != digest or info.get("serve_agent") != path \
                or not isinstance(seen.get("status"), dict):
            seen = None
        else:
            present = set((seen.get("have") or {}).get("present") or [])
            seen["have"] = {"present": [d for d in digests if d in present], "partial": {}}
    return (seen, at_door) if door_too else seen


def _check_info(conn: SSHConnection, path: str, digest: str, info: dict) -> None:
    missing = []
    if not info.get("runtime"):
        missing.append("crun (or runc)")
    if not info.get("nft"):
        missing.append("nftables")
    if missing:
        raise AgentError(f"host lacks {' and '.join(missing)}", host=conn.target.name,
                         hint="install them there: apt-get install crun nftables "
                              "(crun starts containers faster than runc; either works)")
    if info.get("agent_digest") not in (None, digest):
        raise AgentError(f"agent at {path} reports digest {info.get('agent_digest')}, expected {digest}",
                         host=conn.target.name)
    if info.get("serve_agent") == path:
        return
    if info.get("serve_pid"):
        conn.run(["kill", str(info["serve_pid"])], timeout=30)   # an older agent: replace the supervisor only
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
    # the agent's own `serve --daemon` (runtime/supervisor.py start_daemon): one way to start it
    client = AgentClient(conn, agent_path)
    res = conn.run(client.argv("serve", "--daemon"), timeout=60)
    ok, body = protocol.parse_answer(res.exit_code, res.stdout)
    if not ok:
        raise AgentError(f"cannot start the agent supervisor: {(body.get('error') or {}).get('message')}",
                         host=conn.target.name)
