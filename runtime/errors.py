"""Errors the agent reports: each carries a stable protocol error code."""
from __future__ import annotations

from runtime import protocol


class AgentFailure(Exception):
    code = protocol.E_INTERNAL
    exit_code = protocol.EXIT_ERROR

    def __init__(self, message: str, **extra):
        super().__init__(message)
        self.message = message
        self.extra = extra

    def body(self):
        return protocol.error_body(self.code, self.message, **self.extra)


class BadRequest(AgentFailure):
    code = protocol.E_BAD_REQUEST
    exit_code = protocol.EXIT_USAGE


class Usage(AgentFailure):
    code = protocol.E_USAGE
    exit_code = protocol.EXIT_USAGE


class UnknownVerb(AgentFailure):
    code = protocol.E_UNKNOWN_VERB
    exit_code = protocol.EXIT_USAGE


class NewerState(AgentFailure):
    """The state directory was written by a newer agent: refuse rather than misread it."""
    code = protocol.E_STATE_SCHEMA


class DigestMismatch(AgentFailure):
    code = protocol.E_DIGEST


class MissingBlob(AgentFailure):
    code = protocol.E_MISSING_BLOB


class UnsafeImage(AgentFailure):
    code = protocol.E_UNSAFE_IMAGE


class RuntimeFailure(AgentFailure):
    code = protocol.E_RUNTIME


class NoRoom(AgentFailure):
    code = protocol.E_NO_ROOM


class HealthFailure(AgentFailure):
    code = protocol.E_HEALTH


class Locked(AgentFailure):
    code = protocol.E_LOCKED
    exit_code = protocol.EXIT_LOCKED


class Busy(AgentFailure):
    code = protocol.E_BUSY


class NotFound(AgentFailure):
    code = protocol.E_NOT_FOUND
