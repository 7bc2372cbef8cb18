"""The image builder: manifests' ``image:`` sections -> deterministic multi-platform OCI images.

Entry point: ``build_services(desired, store, platforms=None, progress=None) -> {service: BuiltImage}``.
"""
from orchestrator.image.builder import BuildEvent, BuiltImage, PlatformImage, build_services
from orchestrator.image.layer import source_date_epoch

__all__ = ["build_services", "BuiltImage", "PlatformImage", "BuildEvent", "source_date_epoch"]
