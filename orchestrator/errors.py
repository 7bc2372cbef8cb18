"""The one error hierarchy of the control plane.

The CLI prints ``str(error)`` on one line (plus its cause) and exits with
``error.exit_code``; a traceback only with ``--debug``.
"""
from __future__ import annotations

from typing import Optional, Sequence


class OrchError(Exception):
    """Base of every error orch reports to a user."""

    exit_code = 1

    def __init__(self, message: str, *, hint: Optional[str] = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(OrchError):
    exit_code = 2


class ManifestError(OrchError):
    """Bad input in a manifest: says file, line and key path.

    Rendered as ``manifests/web.yaml:12 services/web/deploy/ports/0: expected ...``.
    """

    exit_code = 3

    def __init__(self, message: str, *, file: Optional[str] = None, line: Optional[int] = None,
                 path: Sequence[object] = (), hint: Optional[str] = None):
        self.file = file
        self.line = line
        self.path = tuple(path)
        where = ""
        if file:
            where = file if line is None else f"{file}:{line}"
        key = "/".join(str(p) for p in self.path)
        prefix = " ".join(x for x in (where, key) if x)
        super().__init__(f"{prefix}: {message}" if prefix else message, hint=hint)


class ManifestErrors(ManifestError):
    """Several located problems found together, one per line (``errors`` holds each one)."""

    def __init__(self, errors: Sequence[ManifestError], where: str = "in the manifests"):
        self.errors = list(errors)
        first = self.errors[0]
        OrchError.__init__(self, f"{len(self.errors)} problems {where}:\n"
                           + "\n".join(f"  {e}" for e in self.errors))
        self.file, self.line, self.path = first.file, first.line, first.path


class BuildError(OrchError):
    exit_code = 4


class MissingToolError(OrchError):
    """A system tool is missing; says which Debian package provides it."""

    exit_code = 5

    def __init__(self, tool: str, package: str, purpose: str = ""):
        self.tool = tool
        self.package = package
        why = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{tool} not found{why}; install it with: apt-get install {package}")


class LabError(OrchError):
    exit_code = 6


class TransportError(OrchError):
    """SSH could not connect, authenticate, or a command failed to run."""

    exit_code = 7

    def __init__(self, message: str, *, host: Optional[str] = None, hint: Optional[str] = None):
        self.host = host
        super().__init__(f"{host}: {message}" if host else message, hint=hint)


class HostKeyError(TransportError):
    """The host's key is unknown or does not match known_hosts (never auto-accepted)."""

    exit_code = 8


class AgentError(OrchError):
    """The host agent answered with an error (JSON error object)."""

    exit_code = 9

    def __init__(self, message: str, *, host: Optional[str] = None, code: Optional[str] = None,
                 hint: Optional[str] = None):
        self.host = host
        self.code = code
        super().__init__(f"{host}: {message}" if host else message, hint=hint)


class AgentVersionError(AgentError):
    """The host runs an agent newer than this orch (protocol or state schema)."""


class LockHeldError(OrchError):
    exit_code = 10


class RolloutError(OrchError):
    """A rollout ended with failed hosts; the summary says which host runs what."""

    exit_code = 11
