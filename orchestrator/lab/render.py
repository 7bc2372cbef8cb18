"""Pure renderers for the lab: sshd_config and known_hosts lines."""
from __future__ import annotations

from pathlib import Path

from orchestrator.lab.layout import HostLayout


def render_sshd_config(host: HostLayout, authorized_keys: Path) -> str:
    lines = [
        f"# orch lab host {host.lab}/{host.name} ({host.platform})",
        f"ListenAddress {host.address}",
        f"Port {host.ssh_port}",
        f"HostKey {host.host_key}",
        "PidFile none",
        f"AuthorizedKeysFile {authorized_keys}",
        "PermitRootLogin prohibit-password",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "PrintMotd no",
        "UseDNS no",
        "MaxSessions 128",
        "MaxStartups 200:30:400",
        "Subsystem sftp internal-sftp",
        "",
    ]
    return "\n".join(lines)


def render_known_hosts_line(address: str, port: int, public_key: str) -> str:
    """`public_key` is the `.pub` text: "ssh-ed25519 AAAA... comment"."""
    key_type, key_b64 = public_key.split()[:2]
    host = address if port == 22 else f"[{address}]:{port}"
    return f"{host} {key_type} {key_b64}"
