"""The ``{debian: SUITE, packages: [...]}`` base: mmdebstrap ``--variant=extract`` for the target arch.

Packages are downloaded from the machine's configured Debian mirror and *extracted* (no
maintainer scripts, no target-arch code), so an arm64 or armhf base costs what an amd64 one
does. The resolved versions of every extracted package go to ``orch.lock`` next to the
manifests; when the lock names them, exactly those versions are requested again.
Files that would tie the image to the building machine (resolv.conf, hostname, apt sources,
device nodes) are left out.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import urllib.parse
from typing import Dict, List, Optional, Sequence, Tuple

from orchestrator.errors import BuildError
from orchestrator.image.store import canonical_json
from orchestrator.tools import find_tool

EXCLUDE = ("dev", "etc/resolv.conf", "etc/hostname", "etc/apt/sources.list", "etc/apt/sources.list.d",
           "var/cache/apt/archives/lock", "var/cache/apt/archives/partial", "var/lib/apt/lists",
           "var/cache/apt/pkgcache.bin", "var/cache/apt/srcpkgcache.bin", "var/log/apt",
           "var/cache/ldconfig/aux-cache")


# a Dockerfile's debian base (minbase): which packages were asked for by name differs between a
# first run and one pinned by orch.lock (every package named), the files do not
MINBASE_EXCLUDE = ("var/lib/apt/extended_states",)


def excluded(flavour: str = "") -> tuple:
    """What is left out of a base's layer."""
    return EXCLUDE + (MINBASE_EXCLUDE if flavour else ())


def mountpoint_entries():
    """Empty directories a container runtime mounts over (the root may be read-only there)."""
    from orchestrator.image.layer import Entry
    return [Entry("dev", "dir", 0o755), Entry("proc", "dir", 0o555), Entry("sys", "dir", 0o555),
            Entry("run", "dir", 0o755), Entry("tmp", "dir", 0o1777)]


# debian:SUITE-slim: what Docker's slim images leave out (copyright files stay)
SLIM_EXCLUDE = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/info/*", "/usr/share/locale/*",
                "/usr/share/lintian/*", "/usr/share/linda/*")


def flavour(variant: str = "extract", slim: bool = False) -> str:
    """"" for orch's extracted bases; "minbase" / "minbase-slim" for a Dockerfile's FROM debian."""
    return "" if variant == "extract" else variant + ("-slim" if slim else "")


def lock_key(suite: str, deb_arch: str, packages, flavour: str = "") -> str:
    suite = f"{suite}+{flavour}" if flavour else suite
    return f"{suite}/{deb_arch}/{'+'.join(sorted(packages)) or '-'}"


class LockFile:
    """``orch.lock``: {"debian": {"bookworm/arm64/busybox-static": {"busybox-static": "1:1.35..."}}}."""

    def __init__(self, path: str):
        self.path = path
        self.data: Dict[str, Dict[str, Dict[str, str]]] = {"debian": {}}
        self.changed = False
        if os.path.exists(path):
            try:
                with open(path, "rb") as fh:
                    loaded = json.load(fh)
                self.data["debian"] = dict(loaded.get("debian", {}))
            except (OSError, ValueError) as exc:
                raise BuildError(f"{path}: not a valid lock file ({exc}); delete it to re-resolve") from None

    def get(self, key: str) -> Optional[Dict[str, str]]:
        return self.data["debian"].get(key)

    def set(self, key: str, versions: Dict[str, str]) -> None:
        if self.data["debian"].get(key) != versions:
            self.data["debian"][key] = dict(sorted(versions.items()))
            self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
        tmp = self.path + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(text)
        os.rename(tmp, self.path)
        self.changed = False


def parse_deb_names(listing: str) -> Dict[str, str]:
    """``name_version_arch.deb`` lines (apt's archive names) -> {name: version}."""
    out = {}
    for line in listing.split():
        if not line.endswith(".deb"):
            continue
        parts = line[:-4].split("_")
        if len(parts) == 3:
            out[parts[0]] = urllib.parse.unquote(parts[1])
    return out


def parse_sources(deb822: Sequence[str], one_line: Sequence[str]) -> List[Tuple[str, str, str]]:
    """(uri, suite, components) of the ``deb`` entries in apt sources texts (pure)."""
    out: List[Tuple[str, str, str]] = []
    for text in deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, _, v = line.partition(":")
                fields[k.strip().lower()] = v.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    out.append((uri, suite, fields.get("components", "main")))
    for text in one_line:
        for line in text.splitlines():
            words = line.split("#", 1)[0].split()
            if not words or words[0] != "deb":
                continue
            words = [w for w in words[1:] if not (w.startswith("[") or w.endswith("]"))]
            if len(words) >= 2:
                out.append((words[0], words[1], " ".join(words[2:]) or "main"))
    return out


def machine_mirrors(suite: str, with_security: bool = True) -> List[str]:
    """``deb URI SUITE[-updates|-security] COMPONENTS`` lines for ``suite`` from this machine's apt
    sources (the Debian archive entries only); [] lets mmdebstrap pick its defaults."""
    deb822, one_line = [], []
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        with open(path, errors="replace") as fh:
            deb822.append(fh.read())
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        if os.path.exists(path):
            with open(path, errors="replace") as fh:
                one_line.append(fh.read())
    lines = []
    for uri, host_suite, components in parse_sources(deb822, one_line):
        base, dash, kind = host_suite.partition("-")
        if not re.fullmatch(r"[a-z]+", base) or kind not in ("", "updates", "security"):
            continue
        if kind == "security" and not with_security:
            continue
        if "debian" not in uri:
            continue
        comps = " ".join(c for c in components.split() if c in ("main", "contrib", "non-free", "non-free-firmware"))
        line = f"deb {uri} {suite}{dash}{kind} {comps or 'main'}"
        if line not in lines:
            lines.append(line)
    return lines


def parse_dpkg_status(text: str) -> Dict[str, str]:
    """dpkg's status file -> {package: version} of the installed packages (pure)."""
    out = {}
    for stanza in re.split(r"\n\s*\n", text):
        fields = dict(re.findall(r"^([A-Za-z-]+): ?(.*)$", stanza, re.M))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            out[fields["Package"]] = fields.get("Version", "")
    return out


def render_pin_preferences(pins: Dict[str, str]) -> str:
    """apt preferences holding every locked package at its locked version (pure). Without
    them, mmdebstrap installs the essential set at the mirror's newest versions and the locked
    (older) ones are then a downgrade, which apt refuses: a lock made while the security index
    was unreachable, or before a point release, could no longer be built."""
    return "".join(f"Package: {n}\nPin: version {v}\nPin-Priority: 1001\n\n"
                   for n, v in sorted(pins.items()))


def mmdebstrap_argv(suite: str, deb_arch: str, packages, pins: Optional[Dict[str, str]], target: str,
                    listing: str, mirrors: Sequence[str] = (), variant: str = "extract",
                    slim: bool = False, preferences: str = "") -> list:
    """The argv that makes a base (pure; tested as data). ``preferences``: a file of
    ``render_pin_preferences`` on this machine, copied into the root before apt resolves."""
    include = [f"{n}={v}" for n, v in sorted(pins.items())] if pins else sorted(packages)
    if variant == "extract":
        hook = f"--extract-hook=ls \"$1\"/var/cache/apt/archives > {shlex.quote(listing)}"
    else:
        hook = f"--customize-hook=cp \"$1\"/var/lib/dpkg/status {shlex.quote(listing)}"
    argv = ["mmdebstrap", f"--variant={variant}", f"--arch={deb_arch}", "--mode=root", hook]
    if preferences:   # in the root while apt resolves, gone from the image
        name = "/etc/apt/preferences.d/" + os.path.basename(preferences)
        last = "extract" if variant == "extract" else "customize"   # extract runs no customize
        argv += [f"--setup-hook=copy-in {preferences} /etc/apt/preferences.d",
                 f"--{last}-hook=rm -f \"$1\"{shlex.quote(name)}"]
    if slim:
        argv += [f"--dpkgopt=path-exclude={p}" for p in SLIM_EXCLUDE]
        argv.append("--dpkgopt=path-include=/usr/share/doc/*/copyright")
    if include:
        argv.append("--include=" + ",".join(include))
    return argv + [suite, target] + list(mirrors)


def run_mmdebstrap(suite: str, deb_arch: str, packages, pins: Optional[Dict[str, str]],
                   workdir: str, warn=None, variant: str = "extract", slim: bool = False
                   ) -> Tuple[str, Dict[str, str]]:
    """Extract a rootfs into ``workdir/rootfs``; returns (rootfs, {package: version}).

    When only the security suite's index cannot be fetched (a mirror mid-sync), the base is
    extracted without it and ``warn`` says so.
    """
    tool = find_tool("mmdebstrap", "debian base images")
    target = os.path.join(workdir, "rootfs")
    listing = os.path.join(workdir, "debs.txt")
    env = dict(os.environ, SOURCE_DATE_EPOCH=os.environ.get("SOURCE_DATE_EPOCH", "0"))
    preferences = ""
    if pins:
        preferences = os.path.join(workdir, "orch-lock.pref")   # workdir: our own mkdtemp
        with open(preferences, "w") as fh:
            fh.write(render_pin_preferences(pins))
    proc = None
    for with_security in (True, False):
        argv = mmdebstrap_argv(suite, deb_arch, packages, pins, target, listing,
                               machine_mirrors(suite, with_security), variant, slim,
                               preferences)
        argv[0] = tool
        shutil.rmtree(target, ignore_errors=True)
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        err = proc.stderr.decode(errors="replace")
        if proc.returncode == 0 or not with_security:
            break
        if not re.search(r"Failed to fetch \S*-security/", err):
            break
        if warn:
            warn(f"{suite}-security index for {deb_arch} unavailable on the mirror; "
                 f"extracting {suite}/{deb_arch} without security updates")
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.decode(errors="replace").splitlines() if ln.startswith("E:")]
        reason = lines[0][3:].strip() if lines else proc.stderr.decode(errors="replace").strip()[-300:]
        hint = "a version in orch.lock may have left the mirror: delete its entry to re-resolve" \
            if pins and "not found" in reason else None
        raise BuildError(f"mmdebstrap {suite}/{deb_arch} failed: {reason}", hint=hint)
    with open(listing) as fh:
        text = fh.read()
    versions = parse_deb_names(text) if variant == "extract" else parse_dpkg_status(text)
    return target, versions


def base_record_key(suite: str, deb_arch: str, packages, versions: Dict[str, str], flavour: str = "") -> list:
    key = ["debian", suite, deb_arch, sorted(packages), sorted(versions.items()), "mountpoints",
           json.loads(canonical_json(list(EXCLUDE)))]
    return key + [flavour, list(MINBASE_EXCLUDE)] if flavour else key


def cleanup(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def make_workdir(parent: str) -> str:
    os.makedirs(parent, exist_ok=True)
    return tempfile.mkdtemp(prefix="debian-", dir=parent)
