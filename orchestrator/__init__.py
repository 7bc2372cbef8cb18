"""orch: immutable-server deployment orchestrator (control plane and CLI)."""

__version__ = "0.1.0"
