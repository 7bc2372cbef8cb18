"""`orch build [DIR]`: build every service's image into the content store (and optionally --out)."""
from __future__ import annotations

import sys
import threading
from typing import Dict, List, Optional, Tuple

from orchestrator.commands._common import add_source_arguments, parse_vars, print_json

HELP = "build the services' images (deterministic, multi-platform OCI) into the local store"
EXAMPLES = (
    'orch build manifests/',
    'orch build examples/python-app --platform linux/arm/v7 --out /tmp/pyapp-oci',
)


def add_arguments(parser) -> None:
    add_source_arguments(parser)
    parser.add_argument("--service", action="append", default=[], metavar="NAME",
                        help="build only this service (repeatable)")
    parser.add_argument("--platform", action="append", default=[], metavar="P",
                        help="build only this platform, e.g. linux/arm64 (repeatable)")
    parser.add_argument("--update-lock", action="store_true",
                        help="re-resolve debian package versions from the mirror and rewrite orch.lock")
    parser.add_argument("--out", metavar="OCI_DIR",
                        help="also write a standalone OCI image layout, one index.json entry per service")


class BuildProgress:
    """Maps build events onto a rich progress display (one bar per service/platform) on stderr.

    Usable by other verbs: ``with BuildProgress() as p: build_services(..., progress=p)``.
    The display opens (and rich is imported, ~65 ms) once the build is worth watching: a warning,
    an emulated platform, or a step or base still running ``grace`` seconds after it started (a
    base reports "start" before the builder knows whether it is cached). It then replays what
    came before. A quick build that built layers prints one plain line per image at the end; a
    build whose every layer is cached shows nothing.
    """

    def __init__(self, grace: float = 0.25):
        self.grace = grace
        self.progress = None
        self.console = None
        self.tasks: Dict[Tuple[str, str], int] = {}
        self._seen: List = []                    # events before the display opened
        self._running: Dict[Tuple[str, str], object] = {}    # key -> its "start" event, unresolved
        self._lock = threading.RLock()
        self._timer: Optional[threading.Timer] = None

    @property
    def shown(self) -> bool:
        return self.progress is not None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
            if self.progress is not None:
                return self.progress.__exit__(*exc)
            if exc[0] is None:                     # a failed build reports its error instead
                self._summarize()
        return None

    def _summarize(self) -> None:
        """The quick build's one line per image that built a layer (the bars never opened)."""
        built: Dict[Tuple[str, str], int] = {}
        seconds: Dict[Tuple[str, str], float] = {}
        for ev in self._seen:
            key = (ev.service, ev.platform)
            if ev.state == "built":
                built[key] = built.get(key, 0) + 1
            elif ev.state == "done":
                seconds[key] = ev.seconds
        for (service, platform), n in built.items():
            done = f", done in {seconds[service, platform]:.1f}s" if (service, platform) in seconds else ""
            sys.stderr.write(f"{service} {platform}: {n} layer{'' if n == 1 else 's'} built{done}\n")
        sys.stderr.flush()

    def __call__(self, ev) -> None:
        with self._lock:
            if self.progress is not None:
                self._show(ev)
                return
            self._seen.append(ev)
            key = (ev.service, ev.platform)
            if ev.state == "start":
                self._running[key] = ev
                if self._timer is None:
                    self._timer = threading.Timer(self.grace, self._still_running, (ev,))
                    self._timer.daemon = True
                    self._timer.start()
            else:
                self._running.pop(key, None)
            if ev.state in ("emulated", "warning"):
                self._open()

    def _still_running(self, ev) -> None:
        with self._lock:
            self._timer = None
            if self.progress is not None or not self._running:
                return
            if any(e is ev for e in self._running.values()):
                self._open()
            else:                                 # another step started since: give it its grace
                later = next(iter(self._running.values()))
                self._timer = threading.Timer(self.grace, self._still_running, (later,))
                self._timer.daemon = True
                self._timer.start()

    def _open(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        self.console = Console(stderr=True)
        self.progress = Progress(SpinnerColumn(), TextColumn("{task.fields[name]:<28}"), BarColumn(bar_width=20),
                                 TextColumn("{task.description}"), TimeElapsedColumn(), console=self.console,
                                 transient=False)
        self.progress.__enter__()
        seen, self._seen = self._seen, []
        for ev in seen:
            self._show(ev)

    def _show(self, ev) -> None:
        key = (ev.service, ev.platform)
        if key not in self.tasks:
            self.tasks[key] = self.progress.add_task("", total=ev.total, name=f"{ev.service} {ev.platform}")
        task = self.tasks[key]
        if ev.state in ("emulated", "warning"):
            self.console.print(f"[yellow]{ev.service} {ev.platform}: {ev.label}[/yellow]")
            if ev.state == "warning":
                return
        if ev.state == "done":
            self.progress.update(task, completed=ev.total, description=f"done in {ev.seconds:.1f}s")
        else:
            note = {"cached": " (cached)", "built": "", "start": "…", "emulated": "…"}[ev.state]
            done = ev.step + (1 if ev.state in ("cached", "built") else 0)
            self.progress.update(task, completed=done, description=f"{ev.label}{note}")


def run(args) -> int:
    from orchestrator.image import build_services
    import os
    from orchestrator.image.store import Store
    from orchestrator.manifest.inputs import load_checked

    # secrets are read at apply time only: a build needs --var names and step sources
    desired = load_checked(args.directory, parse_vars(args.var), os.environ, secrets=False)
    store = Store.default()
    with BuildProgress() as progress:
        built = build_services(desired, store, platforms=args.platform or None, progress=progress,
                               services=args.service or None, update_lock=args.update_lock)
    from orchestrator.transport.wire import warm      # a slow-link fleet's xz layers, made once
    warm(store, desired.fleet, {image.manifest_digest: platform for b in built.values()
                                for platform, image in b.images.items()})
    if args.out:
        store.export_layout(args.out, {name: b.index_digest for name, b in built.items()})
    if args.json:
        print_json({"store": store.root, "out": args.out,
                    "services": {name: b.to_json() for name, b in built.items()}})
        return 0
    from orchestrator.fleet.report import human_bytes
    for name, b in built.items():
        print(f"{name}  {b.index_digest}")
        for platform, image in b.images.items():
            print(f"  {platform:<13} {image.manifest_digest}  {human_bytes(image.size):>9}  "
                  f"{len(image.layers)} layers ({image.built} built, {image.cached} cached)")
    if args.out:
        print(f"wrote OCI layout {args.out}", file=sys.stderr)
    return 0
