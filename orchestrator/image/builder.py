"""``build_services``: every service's ``image:`` -> an OCI image index in the content store.

Per platform: the base (scratch / debian / oci / registry) gives the first layers and a
cache key; each step extends the key with its inputs and reuses a cached layer when the key
is known, else builds one. The config, manifest and index are canonical JSON, so the same
inputs give the same digests on any machine.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from orchestrator.image import debian as deb
from orchestrator.image.cache import LayerCache, chain_key
from orchestrator.image.documents import iso_time, merge_env, render_config, render_index, render_manifest
from orchestrator.image.layer import Layer, source_date_epoch, walk_tree, write_layer
from orchestrator.image.steps import copy_entries, describe, step_inputs, template_entries
from orchestrator.errors import BuildError
from orchestrator.manifest.model import (ContextCopyStep, CopyStep, DebianBase, Desired, MkdirStep, OciBase,
                                         RegistryBase, RunStep, ScratchBase, Service, Stage, StageBase,
                                         StageCopyStep, TemplateStep)
from orchestrator.manifest.units import PLATFORM_ARCH
from orchestrator.image.store import Store
from runtime.records import Mutable, Record, mutable, record

BUILDER_VERSION = 1          # part of every cache key: bump when layer bytes would change


@record
class BuildEvent(Record):
    """One progress report: ``state`` is start | cached | built | emulated | warning | done."""

    service: str
    platform: str
    step: int                 # 0 = base, 1.. = steps, total = finalise
    total: int
    label: str
    state: str
    seconds: float = 0.0


@record
class PlatformImage(Record):
    platform: str
    manifest_digest: str
    config_digest: str
    layers: Tuple[Mapping[str, Any], ...]
    size: int                  # manifest + config + compressed layers, bytes
    built: int                 # layers made in this build
    cached: int                # layers reused from the cache
    seconds: float
    emulated_steps: int = 0    # run steps executed through qemu-user


@record
class BuiltImage(Record):
    service: str
    index_digest: str
    manifests: Mapping[str, str]              # {platform: manifest digest}
    images: Mapping[str, PlatformImage] = field(default_factory=dict)

    def to_json(self) -> Dict[str, Any]:
        return {"service": self.service, "index": self.index_digest, "manifests": dict(self.manifests),
                "sizes": {p: i.size for p, i in self.images.items()},
                "layers": {p: {"built": i.built, "cached": i.cached} for p, i in self.images.items()}}


Progress = Optional[Callable[[BuildEvent], None]]


@mutable
class _StageResult(Mutable):
    key: str                               # the cache chain key after the stage's last step
    layers: List[Dict[str, Any]]
    config: Dict[str, Any]                 # the rendered image config (a later FROM STAGE starts from it)
    built: int = 0
    cached: int = 0
    emulated: int = 0


def base_name(base) -> str:
    """How errors name a base image: oci:DIR[:TAG], a registry reference, debian:SUITE, scratch."""
    if isinstance(base, OciBase):
        return f"oci:{base.dir}" + (f":{base.tag}" if base.tag else "")
    if isinstance(base, RegistryBase):
        return base.ref
    if isinstance(base, DebianBase):
        return f"debian:{base.suite}"
    if isinstance(base, StageBase):
        return f"stage {base.stage}"
    return "scratch"


def _layer_dict(layer: Layer) -> Dict[str, Any]:
    return {"digest": layer.digest, "diff_id": layer.diff_id, "size": layer.size, "media_type": layer.media_type}


def _emulated(platform: str) -> bool:
    from orchestrator.image import sandbox     # a run step's: copies and templates need none
    return sandbox.emulated(platform)


class Builder:
    def __init__(self, store: Store, cache: LayerCache, lock: deb.LockFile, *, epoch: int,
                 progress: Progress = None, workroot: Optional[str] = None, update_lock: bool = False):
        self.store = store.ensure()
        self.cache = cache
        self.lock = lock
        self.epoch = epoch
        self.progress = progress
        self.workroot = workroot or os.path.join(os.path.dirname(cache.directory), "work")
        self._run_counter = 0
        self.update_lock = update_lock

    def _emit(self, svc: str, platform: str, step: int, total: int, label: str, state: str,
              seconds: float = 0.0) -> None:
        if self.progress:
            self.progress(BuildEvent(svc, platform, step, total, label, state, seconds))

    def _write(self, entries) -> Layer:
        """Write a layer and remember its paths (later steps ask which directories exist)."""
        entries = list(entries)
        layer = write_layer(self.store, entries, self.epoch)
        self.cache.save_paths(_layer_dict(layer), (e.path for e in entries))
        return layer

    # ---------------------------------------------------------------- bases

    def _base(self, base, platform: str, warn=None, stages=None) -> Tuple[str, List[Dict[str, Any]], Dict[str, Any], List[Dict], bool]:
        """-> (key, layers, base config section, history, cached?)"""
        if isinstance(base, StageBase):
            done = stages[base.stage]
            return done.key, list(done.layers), done.config.get("config", {}), list(done.config["history"]), True
        if isinstance(base, ScratchBase):
            return chain_key(BUILDER_VERSION, "scratch", platform), [], {}, [], True
        if isinstance(base, DebianBase):
            return self._debian(base, platform, warn)
        # imported here: urllib and the registry client cost every build (and apply) 20 ms
        from orchestrator.image.registry import LayoutSource, RegistrySource, import_image
        if isinstance(base, OciBase):
            source = LayoutSource(base.dir, base.tag)
        elif isinstance(base, RegistryBase):
            source = RegistrySource(base.ref, base.insecure)
        else:
            raise BuildError(f"unknown base {base!r}")
        imported = import_image(source, platform, self.store)
        history = [h for h in imported.config.get("history", [])]
        key = chain_key(BUILDER_VERSION, "image", platform, imported.manifest_digest)
        return key, imported.layers, imported.config.get("config", {}) or {}, history, False

    def _debian(self, base: DebianBase, platform: str, warn=None):
        deb_arch = PLATFORM_ARCH[platform][2]
        flavour = deb.flavour(base.variant, base.slim)
        lkey = deb.lock_key(base.suite, deb_arch, base.packages, flavour)
        pins = None if self.update_lock else self.lock.get(lkey)
        if pins:
            key = chain_key(BUILDER_VERSION, *deb.base_record_key(base.suite, deb_arch, base.packages, pins, flavour))
            hit = self.cache.get(key, self.store)
            if hit:
                return key, hit["layers"], {}, hit["history"], True
        from orchestrator.image import sandbox     # imported for builds only: a cached build needs neither

        work = deb.make_workdir(self.workroot)
        try:
            if base.variant != "extract":
                sandbox.ensure_binfmt(platform)      # maintainer scripts run for the target arch
            rootfs, versions = deb.run_mmdebstrap(base.suite, deb_arch, base.packages, pins, work, warn,
                                                  base.variant, base.slim)
            entries = list(walk_tree(rootfs, exclude=deb.excluded(flavour))) + deb.mountpoint_entries()
            layer = self._write(entries)
        finally:
            deb.cleanup(work)
        missing = [p for p in base.packages if p not in versions]
        if missing:
            raise BuildError(f"mmdebstrap did not fetch {', '.join(missing)} for {deb_arch}")
        self.lock.set(lkey, versions)
        key = chain_key(BUILDER_VERSION, *deb.base_record_key(base.suite, deb_arch, base.packages, versions, flavour))
        pkgs = " ".join(base.packages) or "(no packages)"
        what = f"debian {base.suite}" + (f" ({flavour})" if flavour else "")
        history = [{"created": iso_time(self.epoch), "created_by": f"orch: {what} {deb_arch}: {pkgs}"}]
        self.cache.put(key, {"layers": [_layer_dict(layer)], "history": history})
        return key, [_layer_dict(layer)], {}, history, False

    # ---------------------------------------------------------------- steps

    def _step_layer(self, step, layers: List[Dict[str, Any]], base_config: Mapping[str, Any],
                    platform: str, stage: Stage, stages) -> Optional[Layer]:
        """The layer a step adds (None: the step changes no file, e.g. WORKDIR of an existing directory).
        The sandbox (runc, binfmt: ~7 ms of imports) and Dockerfile steps are imported by the
        steps that use them: a copy or a template needs neither."""
        if isinstance(step, CopyStep):
            existing = self.cache.chain_paths(self.store, layers)
            return self._write(copy_entries(step, existing))
        if isinstance(step, TemplateStep):
            existing = self.cache.chain_paths(self.store, layers)
            return self._write(template_entries(step, existing))
        from orchestrator.image import dockersteps
        if isinstance(step, ContextCopyStep):
            existing = self.cache.chain_paths(self.store, layers)
            uid, gid = dockersteps.layer_owner(self.store, layers, step.owner)
            return self._write(dockersteps.context_entries(step, existing, uid, gid))
        if isinstance(step, MkdirStep):
            entries = dockersteps.mkdir_entries(step, self.cache.chain_paths(self.store, layers))
            return self._write(entries) if entries else None
        from orchestrator.image import sandbox
        if isinstance(step, StageCopyStep):
            work = self._workdir("copy-")
            try:
                root = os.path.join(work, "root")
                sandbox.unpack_layers(self.store, stages[step.stage].layers, root, f"stage {step.stage} ({platform})")
                existing = self.cache.chain_paths(self.store, layers)
                uid, gid = dockersteps.layer_owner(self.store, layers, step.owner)
                return self._write(dockersteps.stage_entries(step, root, existing, uid, gid))
            finally:
                shutil.rmtree(work, ignore_errors=True)
        if isinstance(step, RunStep):
            work = self._workdir("run-")
            self._run_counter += 1
            name = f"orch-build-{os.getpid()}-{self._run_counter}"
            if step.env_only:
                env = merge_env(base_config.get("Env") or [], dict(step.env))
                cwd = step.workdir or "/"
            else:
                env = merge_env(base_config.get("Env") or [], dict(stage.config.env, **dict(step.env)))
                cwd = stage.config.workdir or base_config.get("WorkingDir") or "/"
            try:
                upper = sandbox.run_in_sandbox(self.store, layers, step.command, env, cwd, platform, work, name,
                                               user=step.user,
                                               image=f"{base_name(stage.base)} ({platform})")
                return self._write(list(walk_tree(upper, overlay_upper=True, exclude=sandbox.SANDBOX_MOUNTPOINTS)))
            finally:
                sandbox.umount_quiet(os.path.join(work, "bundle", "rootfs"))
                shutil.rmtree(work, ignore_errors=True)
        raise BuildError(f"unknown step {step!r}")

    def _workdir(self, prefix: str) -> str:
        os.makedirs(self.workroot, exist_ok=True)
        return tempfile.mkdtemp(prefix=prefix, dir=self.workroot)

    # ---------------------------------------------------------------- images

    def _build_stage(self, svc: Service, stage: Stage, stages, counter: List[int], total: int) -> "_StageResult":
        """Base + steps of one stage -> its layers and rendered config (for the image or a later stage)."""
        platform = stage.platform
        what = f"base {stage.base.kind}" + (f" {stage.name}" if stage.name and not stage.name.isdigit() else "")
        self._emit(svc.name, platform, counter[0], total, what, "start")
        t0 = time.monotonic()
        key, layers, base_config, history, base_cached = self._base(
            stage.base, platform, lambda msg: self._emit(svc.name, platform, counter[0], total, msg, "warning"),
            stages)
        layers, history = list(layers), list(history)
        result = _StageResult(key="", layers=[], config={}, built=0 if base_cached else 1,
                              cached=1 if base_cached and layers and not isinstance(stage.base, StageBase) else 0)
        self._emit(svc.name, platform, counter[0], total, what, "cached" if base_cached else "built",
                   time.monotonic() - t0)
        counter[0] += 1
        for step in stage.steps:
            i = counter[0]
            label = describe(step)
            key = chain_key(BUILDER_VERSION, key, step_inputs(step))
            hit = self.cache.get(key, self.store)
            t0 = time.monotonic()
            if hit:
                new = list(hit["layers"])
                result.cached += 1
                self._emit(svc.name, platform, i, total, label, "cached")
            else:
                if isinstance(step, RunStep) and _emulated(platform):
                    result.emulated += 1
                    self._emit(svc.name, platform, i, total, label + f" (emulated: qemu-user for {platform}, slower)",
                               "emulated")
                else:
                    self._emit(svc.name, platform, i, total, label, "start")
                layer = self._step_layer(step, layers, base_config, platform, stage, stages)
                new = [_layer_dict(layer)] if layer is not None else []
                self.cache.put(key, {"layers": new})
                result.built += 1
                self._emit(svc.name, platform, i, total, label, "built", time.monotonic() - t0)
            counter[0] += 1
            layers += new
            entry = {"created": iso_time(self.epoch), "created_by": f"orch: {label}"}
            if not new:
                entry["empty_layer"] = True
            history.append(entry)
        result.key, result.layers = key, layers
        result.config = render_config(platform, base_config, stage.config, [l["diff_id"] for l in layers],
                                      history, self.epoch)
        return result

    def build_platform(self, svc: Service, platform: str) -> PlatformImage:
        started = time.monotonic()
        df = svc.image.dockerfile
        plan = df.stages[platform] if df else (Stage("", svc.image.base, svc.image.steps, svc.image.config,
                                                     platform),)
        total = sum(len(stage.steps) + 1 for stage in plan) + 1
        done: Dict[str, _StageResult] = {}
        counter = [0]
        for stage in plan:
            done[stage.name] = self._build_stage(svc, stage, done, counter, total)
        final = done[plan[-1].name]
        layers = final.layers
        config_digest, config_size = self.store.put_json(final.config)
        manifest = render_manifest(config_digest, config_size, layers)
        manifest_digest, manifest_size = self.store.put_json(manifest)
        size = manifest_size + config_size + sum(l["size"] for l in layers)
        seconds = time.monotonic() - started
        self._emit(svc.name, platform, total, total, "image", "done", seconds)
        built = sum(r.built for r in done.values())
        cached = sum(r.cached for r in done.values())
        emulated = sum(r.emulated for r in done.values())
        return PlatformImage(platform, manifest_digest, config_digest, tuple(layers), size, built, cached,
                             seconds, emulated)

    def build_service(self, svc: Service, platforms: Optional[Sequence[str]] = None) -> BuiltImage:
        wanted = [p for p in svc.image.platforms if platforms is None or p in platforms]
        if not wanted:
            raise BuildError(f"service {svc.name} is not built for {', '.join(platforms or [])} "
                             f"(its platforms: {', '.join(svc.image.platforms)})")
        images = {p: self.build_platform(svc, p) for p in wanted}
        entries = [{"platform": p, "digest": images[p].manifest_digest,
                    "size": self.store.size(images[p].manifest_digest)} for p in wanted]
        index_digest, _ = self.store.put_json(render_index(entries))
        self.store.tag(svc.name, index_digest)
        return BuiltImage(svc.name, index_digest, {p: images[p].manifest_digest for p in wanted}, images)


def build_services(desired: Desired, store: Store, platforms: Optional[Sequence[str]] = None,
                   progress: Progress = None, services: Optional[Sequence[str]] = None,
                   cache_dir: Optional[str] = None, epoch: Optional[int] = None,
                   update_lock: bool = False) -> Dict[str, BuiltImage]:
    """Build every (or the named) service of ``desired``; returns {service: BuiltImage}.

    The store keeps the layers and JSON; ``cache_dir`` (default: next to the store, ``cache``)
    keeps step records; ``orch.lock`` next to the manifests records debian package versions
    (``update_lock`` re-resolves them from the mirror instead of requesting the locked ones).
    """
    names = list(services) if services else list(desired.services)
    unknown = [n for n in names if n not in desired.services]
    if unknown:
        raise BuildError(f"no service {unknown[0]!r} (services: {', '.join(desired.services) or 'none'})")
    if platforms:
        offered = {p for n in names for p in desired.services[n].image.platforms}
        missing = [p for p in platforms if p not in offered]
        if missing:
            raise BuildError(f"no service is built for {', '.join(missing)}")
    cache = LayerCache(cache_dir or os.path.join(os.path.dirname(store.root), "cache"))
    lock = deb.LockFile(desired.lock_path)
    builder = Builder(store, cache, lock, epoch=source_date_epoch() if epoch is None else epoch,
                      progress=progress, update_lock=update_lock)
    out: Dict[str, BuiltImage] = {}
    try:
        for name in names:
            svc = desired.services[name]
            if platforms and not any(p in svc.image.platforms for p in platforms):
                continue
            out[name] = builder.build_service(svc, platforms)
    finally:
        lock.save()
    return out
