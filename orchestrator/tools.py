"""System tools orch runs on the control machine, and the Debian package providing each."""
from __future__ import annotations

import shutil
from typing import Iterable

from orchestrator.errors import MissingToolError

PACKAGE_OF = {
    "ip": "iproute2",
    "tc": "iproute2",
    "sshd": "openssh-server",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "mount": "mount",
    "sysctl": "procps",
    "runc": "runc",
    "crun": "crun",
    "nft": "nftables",
    "mmdebstrap": "mmdebstrap",
    "skopeo": "skopeo",
    "umoci": "umoci",
    "qemu-aarch64-static": "qemu-user-static",
    "qemu-arm-static": "qemu-user-static",
}

_SBIN = "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin"


def find_tool(tool: str, purpose: str = "") -> str:
    """Absolute path of `tool`, or MissingToolError naming the package to install."""
    path = shutil.which(tool) or shutil.which(tool, path=_SBIN)
    if not path:
        raise MissingToolError(tool, PACKAGE_OF.get(tool, tool), purpose)
    return path


def require_tools(tools: Iterable[str], purpose: str = "") -> dict:
    return {t: find_tool(t, purpose) for t in tools}
