"""Manifests: YAML (with line numbers) + Jinja2 vars -> validated, frozen ``Desired``.

Entry point: ``load_desired(directory, vars) -> Desired``; everything else in orch reads
the dataclasses of ``orchestrator.manifest.model``, never raw YAML.
"""
from orchestrator.errors import ManifestError
from orchestrator.manifest.loader import fleet_platforms, load_desired, manifest_files
from orchestrator.manifest.model import (
    DEFAULT_FLEET, CopyStep, DebianBase, DeploySpec, Desired, Fleet, FleetHost, HealthCheck,
    HostSelector, ImageConfig, ImageSpec, LabSpec, OciBase, Port, RegistryBase, Resources, RunStep,
    ScratchBase, Secret, Service, Strategy, TemplateStep, Volume)
from orchestrator.manifest.units import PLATFORM_ARCH, PLATFORMS

__all__ = [
    "ManifestError", "load_desired", "manifest_files", "fleet_platforms", "DEFAULT_FLEET", "CopyStep",
    "DebianBase", "DeploySpec", "Desired", "Fleet", "FleetHost", "HealthCheck", "HostSelector",
    "ImageConfig", "ImageSpec", "LabSpec", "OciBase", "Port", "RegistryBase", "Resources", "RunStep",
    "ScratchBase", "Secret", "Service", "Strategy", "TemplateStep", "Volume", "PLATFORMS", "PLATFORM_ARCH",
]
