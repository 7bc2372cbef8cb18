"""What the agent records of each container (meta.json) and how to read its state: light
enough for `status`/`observe`, which should not import the machinery that creates containers."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional

from runtime import oci
from runtime.layout import Layout, read_json, write_json


@dataclass
class Meta:
    id: str
    service: str
    slot: str
    release: str
    instance: str
    runtime: str
    ip: str = ""
    pid: int = 0
    starttime: str = ""
    started: bool = False
    created: float = 0.0
    stop_signal: str = "TERM"
    prepared: str = ""        # created by ``prepare`` for the session of this lock token, not started

    @classmethod
    def load(cls, path: str) -> Optional["Meta"]:
        d = read_json(path)
        if not d:
            return None
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def save(self, path: str) -> None:
        write_json(path, self.__dict__)


def container_id(host_id: str, service: str, slot: str) -> str:
    return f"o{host_id}-{service}-{slot}"


def veth_key(meta: "Meta") -> str:
    """Host-side veth names are per instance: a dying netns releases its veth lazily."""
    return f"{meta.id}/{meta.instance}"


def cdir(layout: Layout, cid: str) -> str:
    return os.path.join(layout.containers, cid)


def log_path(layout: Layout, service: str, slot: str) -> str:
    return os.path.join(layout.logs, f"{service}.{slot}.log")


LOG_TAIL = 10         # lines of a failed container's log in apply's answer


def log_tail(layout: Layout, service: str, slot: str, lines: int = LOG_TAIL) -> str:
    """"; last lines of its log:" and the slot's last lines, or "" when it wrote nothing."""
    try:
        with open(log_path(layout, service, slot), "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 8192))
            tail = f.read().decode(errors="replace").splitlines()[-lines:]
    except OSError:
        return ""
    if not tail:
        return ""
    return "; last lines of its log:\n" + "\n".join("  | " + line[:300] for line in tail)


def list_metas(layout: Layout) -> List[Meta]:
    out = []
    try:
        names = sorted(os.listdir(layout.containers))
    except FileNotFoundError:
        return out
    for name in names:
        m = Meta.load(os.path.join(layout.containers, name, "meta.json"))
        if m is not None:
            out.append(m)
    return out


def rt_of(meta: Meta, rt: oci.Runtime) -> oci.Runtime:
    """The runtime that created this container (it alone knows its state)."""
    if meta.runtime == rt.name:
        return rt
    return oci.runtime_named(meta.runtime, os.path.dirname(rt.root))


def list_orphans(layout: Layout, host_id: str, metas: List[Meta]) -> List[Meta]:
    """Containers the runtime knows (ours, by id prefix) that have no container dir: left by
    an agent killed while ``runc create`` was still running. Returned as minimal metas."""
    known = {m.id for m in metas}
    prefix = f"o{host_id}-"
    out = []
    for name in ("runc", "crun"):
        try:
            ids = sorted(os.listdir(os.path.join(layout.run, name)))
        except FileNotFoundError:
            continue
        for cid in ids:
            if cid.startswith(prefix) and cid not in known:
                service, _, slot = cid[len(prefix):].rpartition("-")
                out.append(Meta(id=cid, service=service, slot=slot, release="", instance="",
                                runtime=name))
    return out


def status_of(m: Meta, rt: oci.Runtime) -> str:
    rt = rt_of(m, rt)
    alive = oci.proc_alive(m.pid, m.starttime) if m.pid else False
    if m.started:
        return "running" if alive else "stopped"
    return "created" if alive and oci.known(rt, m.id) else "gone"
