"""The agent verbs: each takes parsed args (+ a request) and returns one JSON-able dict.

Verbs are thin: admission checks live in ``admission``, the reconcile loop in ``reconcile``,
garbage collection in ``gc``, host and agent facts in ``hostinfo``.
"""
from __future__ import annotations

import os
import platform as _platform
import shutil
import time
from typing import Any, Dict, List, Optional

from runtime import meta, protocol
from runtime.errors import AgentFailure, BadRequest, NotFound
from runtime.hostinfo import agent_digest, host_platform, serve_agent, serve_pid
from runtime.pid1 import find_init
from runtime.layout import Layout

# What only the verbs that change the host use (admission, reconcile and the planner, gc, the
# deploy spec) is imported by those verbs: a read verb starts without it.
RESTART_RESET_AFTER = 60.0   # as runtime.host: a container up this long is no longer crash-looping


def make_host(layout: Layout, log=None):
    from runtime import cgroups, host, oci
    layout.ensure()
    cgroups.run_ensure_cgroups()
    rt = oci.choose_runtime(layout.run)
    h = host.Host(layout, rt, log=log or (lambda m: None))
    h.state.upgrade()       # verbs that change the host write the state in this schema
    return h


def _check_lock(layout: Layout, token: Optional[str], verb: str) -> None:
    """Before a mutating verb looks at anything: the caller must hold the deploy lock."""
    from runtime.state import State
    State(layout).check_lock(token, verb)


def _given_up(service: str, given_up: Dict[str, str]) -> Optional[dict]:
    if service not in given_up:
        return None
    return {"ok": False, "release": None, "slot": None, "error": given_up[service]}


# --- verbs --------------------------------------------------------------------------------

def verb_info(layout: Layout, req: dict) -> dict:
    from runtime import oci
    rt = oci.choose_runtime(layout.run)
    from runtime.resources import free_disk, free_memory
    pid = serve_pid(layout)
    return {"platform": host_platform(), "agent_digest": agent_digest(), "runtime": rt.name,
            "runtime_version": oci.version(rt) if req.get("runtime_version", True) else None,
            "python": _platform.python_version(),
            "free_disk": free_disk(layout.root), "free_memory": free_memory(),
            "nft": shutil.which("nft") is not None, "protocol": protocol.PROTOCOL_VERSION,
            "state_schema": protocol.STATE_SCHEMA,
            "host_id": layout.read_host_id(), "serve_pid": pid, "serve_agent": serve_agent(pid),
            "init": find_init()}


def verb_observe(layout: Layout, req: dict) -> dict:
    """What `orch plan`/`apply` asks every host, in one round trip: info (without the runtime's
    version, which costs a process), which of ``digests`` are here, and the status."""
    return {"info": verb_info(layout, {"runtime_version": False}), "have": verb_have(layout, req),
            "status": verb_status(layout, {})}


def verb_have(layout: Layout, req: dict) -> dict:
    from runtime import store
    digests = req.get("digests")
    if not isinstance(digests, list):
        raise BadRequest("have: expected {\"digests\": [...]}")
    return store.have(layout, digests, with_layers=bool(req.get("layers")))


def verb_receive(layout: Layout, stream) -> dict:
    from runtime import store
    layout.ensure()
    return store.receive(layout, stream)


def verb_apply(layout: Layout, req: dict, log=None) -> dict:
    from runtime import admission, reconcile, snapshot
    from runtime.gc import read_records
    from runtime.spec import Target
    services = req.get("services")
    if not isinstance(services, dict) or not services:
        raise BadRequest("apply: expected {\"services\": {NAME: {...}}, \"who\": ...}")
    who = str(req.get("who") or "unknown")
    plat = host_platform()
    checked = {n: admission.check_service(layout, n, s, plat) for n, s in sorted(services.items())}
    _check_lock(layout, req.get("lock"), "apply")
    h = make_host(layout, log)
    with h.state.flock("converge.lock"):
        snapshot.forget(layout.run)       # a reader asks the agent until serve writes anew
        reconcile.repair_lost_state(h)
        target = h.state.target()
        admission.check_ports({n: Target.from_json(n, t).deploy for n, t in target.items()
                               if n not in checked},
                              {n: Target.from_json(n, t).deploy for n, t in checked.items()},
                              {n: Target.from_json(n, t).deploy for n, t in target.items()
                               if n in checked})
        admission.check_names(set(target) | set(checked))
        records = read_records(layout)
        st = h.state.status()
        for n, t in checked.items():
            target[n] = t
            records.setdefault(n, {})[t["release"]] = t
            h.state.save_secrets(n, dict(services[n].get("secrets") or {}),
                                 keep=[x.name for x in Target.from_json(n, t).deploy.secrets
                                       if not x.tmpfs])
            (st["failed"].get(n) or {}).pop(t["release"], None)
        h.state.save_status(st)
        h.state.save_records(records)
        h.state.save_target(target)
        for n, t in checked.items():
            h.state.audit(who, "apply", n, t["release"])
        if not req.get("wait", True):
            return {"services": {n: {"ok": True, "accepted": True, "wanted": t["release"]}
                                 for n, t in checked.items()}}
        given_up = reconcile.converge(h, services=list(checked))
        results = {n: _given_up(n, given_up) or reconcile.result_of(h, n) for n in checked}
        pending = reconcile.old_slots(h, checked)
        if not pending:
            _collect(h)
    if pending:      # it collects first, after the answer (the old slot's release is kept anyway)
        start_finisher(layout, pending)
    return {"services": results}


def verb_prepare(layout: Layout, req: dict, log=None) -> dict:
    """A later wave's containers, made while an earlier wave runs (the pipelined rollout): for
    each service of an ``apply`` request, what ``apply`` would do up to its ``Start`` (unpack
    the image, stop a stale slot that does not serve), then ``Start`` without its last step:
    layers, bundle, network and ``runc create``. Nothing of the release runs, and neither the
    target nor what serves changes. The container is held while the session's lock is:
    ``apply`` begins it (``Begin``), or it is stopped once the lock is gone (by ``serve``).
    Best effort: a service that cannot be prepared now (a drain, stop-first, volumes a userns
    start hands over, no room, a failure) is left to ``apply``, with why. It runs at a
    background priority (the host serves meanwhile), a step at a time under the converge lock
    (``serve`` looks after what serves between them); ``Begin`` gives the container the
    agent's own priority before it starts."""
    from runtime import admission
    services = req.get("services")
    if not isinstance(services, dict) or not services:
        raise BadRequest("prepare: expected {\"services\": {NAME: {...}}, \"lock\": ...}")
    token = req.get("lock")
    _check_lock(layout, token, "prepare")
    plat = host_platform()
    checked = {n: admission.check_service(layout, n, s, plat) for n, s in sorted(services.items())}
    h = make_host(layout, log)
    out = {}
    before = os.getpriority(os.PRIO_PROCESS, 0)
    _set_priority(max(BACKGROUND_NICE, before))    # the host serves meanwhile: it yields to that
    try:
        for n, t in checked.items():
            out[n] = _prepare_one(h, n, t, dict(services[n].get("secrets") or {}), str(token))
    finally:
        _set_priority(before)
    return {"services": out}


BACKGROUND_NICE = 10


def _set_priority(nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except OSError:
        pass


def _prepare_one(h, name: str, t: dict, secrets: dict, token: str) -> dict:
    from runtime.host import want_of
    from runtime.spec import Target
    from runtime.state import lock_mark
    target = Target.from_json(name, t)
    want = want_of(name, target)
    if want.exclusive or want.stop_first:
        return {"prepared": None, "why": "one slot at a time: apply stops the old one first"}
    if target.deploy.userns and target.deploy.volumes:
        return {"prepared": None, "why": "its start hands its volumes over (userns)"}
    try:
        for _ in range(4):
            with h.state.flock("converge.lock"):
                done = _prepare_step(h, name, t, target, want, secrets, lock_mark(token))
            if done is not None:
                return done
    except Exception as exc:  # noqa: BLE001 - apply starts it the usual way and reports what fails
        msg = exc.message if isinstance(exc, AgentFailure) else f"{type(exc).__name__}: {exc}"
        h.log(f"prepare {name}: {msg}")
        return {"prepared": None, "why": msg[:500]}
    return {"prepared": None, "why": "still not ready to start after 4 steps"}


def _prepare_step(h, name: str, t: dict, target, want, secrets: dict, mark: str) -> Optional[dict]:
    """The next step of a preparation, the converge lock held: None when a step ran and
    another may follow, else the service's answer."""
    from runtime import planner, snapshot
    from runtime.executors import make_container
    from runtime.gc import read_records
    wants = tuple(w for w in h.wants() if w.service != name) + (want,)
    obs = h.observe(wants)
    step = next((s for s in planner.plan(wants, obs)
                 if getattr(s, "service", None) == name
                 or getattr(s, "blocks", None) == name
                 or isinstance(s, planner.EnsureNetwork)
                 or (isinstance(s, planner.Unpack) and s.manifest == want.manifest)), None)
    serving = next((c.slot for c in obs.current if c.service == name), None)
    if isinstance(step, (planner.EnsureNetwork, planner.Unpack)) or (
            isinstance(step, planner.Stop) and step.slot != serving):
        snapshot.forget(h.layout.run)     # a reader asks the agent until serve writes anew
        h.execute(step, obs)              # what apply would do first; nothing that serves
        return None
    if isinstance(step, planner.Begin):
        return {"prepared": step.slot, "instance": step.instance}
    if not isinstance(step, planner.Start):
        why = (getattr(step, "why", "") or type(step).__name__) if step else "nothing to start"
        return {"prepared": None, "why": why}
    snapshot.forget(h.layout.run)
    # the record first: gc keeps what a container runs only while its record is there
    records = read_records(h.layout)
    records.setdefault(name, {})[t["release"]] = t
    h.state.save_records(records)
    h.state.journal("Prepare", "begin", service=name, slot=step.slot, release=step.release)
    meta = make_container(h, name, step.slot, target, secrets, prepared=mark)
    h.state.journal("Prepare", "done")
    return {"prepared": step.slot, "instance": meta.instance}


def start_finisher(layout: Layout, services: List[str]) -> None:
    """The old slots' drain and stop after the answer, detached (its own session, no stdio),
    so neither this process nor its caller waits for them: a fork of this process, which has
    the agent loaded (a new Python cost every host a start, ~50 ms of CPU, on every change);
    a new `finish` process where fork fails."""
    import os
    try:
        pid = os.fork()
    except OSError:
        return _spawn_finisher(layout, services)
    if pid:
        os.waitpid(pid, 0)                     # the middle process leaves at once
        return
    code = 1
    try:
        os.setsid()
        if os.fork():                          # the finisher is nobody's child: no zombie
            code = 0
        else:
            import gc
            gc.freeze()     # the session's objects are never scanned here (nor copied for it)
            null = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(null, fd)
            os.closerange(3, 1 << 16)          # the session's pipes or socket: its caller's EOF
            _background_priority()
            verb_finish(layout, services)
            code = 0
    except BaseException:  # noqa: BLE001 - a fork never returns into the agent's caller
        pass
    finally:
        os._exit(code)


def _spawn_finisher(layout: Layout, services: List[str]) -> None:
    import subprocess
    import sys
    argv0 = sys.argv[0]
    flags = ["-I", "-S"] if argv0.endswith(".pyz") else []
    try:
        subprocess.Popen([sys.executable, *flags, argv0, "--root", layout.root, "--run", layout.run,
                          "finish", *services], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    except OSError:
        pass        # serve finishes them within a tick, or the next change of the service


def _background_priority() -> None:
    """The finisher's work (an old slot's stop, its runtime's delete, unmounts) is nobody's
    wait: it yields the CPU to what serves and to the rollout's next wave (on a Pi, or on hosts
    that share cores)."""
    _set_priority(max(BACKGROUND_NICE, os.getpriority(os.PRIO_PROCESS, 0)))


def verb_finish(layout: Layout, services: List[str], log=None) -> dict:
    """What `apply` left to do for ``services`` after it answered (see ``start_finisher``):
    collect garbage, then drain and stop the old slots."""
    from runtime import reconcile
    before = os.getpriority(os.PRIO_PROCESS, 0)
    _background_priority()
    try:
        h = make_host(layout, log)
        _collect(h, take_lock=True)     # what apply left to collect, now that it has answered
        targets = h.targets()
        wait = max([targets[n].deploy.drain + targets[n].deploy.stop_timeout
                    for n in services if n in targets] + [0.0])
        reconcile.finish_background(h, services, h.clock() + wait + 30.0)
        from runtime.cli import write_snapshot_now
        write_snapshot_now(layout)      # the host as it is now: a next command's first look
    finally:
        _set_priority(before)
    return {"services": {n: {"ok": True} for n in services}}


def verb_rollback(layout: Layout, service: str, to: Optional[str], who: str, log=None,
                  lock: Optional[str] = None) -> dict:
    from runtime import reconcile, snapshot
    from runtime.gc import read_records
    _check_lock(layout, lock, "rollback")
    h = make_host(layout, log)
    with h.state.flock("converge.lock"):
        snapshot.forget(layout.run)       # a reader asks the agent until serve writes anew
        reconcile.repair_lost_state(h)
        st = h.state.status()
        records = read_records(layout).get(service) or {}
        if to is None:
            hist = st["history"].get(service) or []
            if not hist:
                raise NotFound(f"{service}: no previous release to roll back to")
            to = hist[-1]
        if to not in records:
            raise NotFound(f"{service}: release {to} is not known on this host")
        target = h.state.target()
        target[service] = records[to]
        (st["failed"].get(service) or {}).pop(to, None)
        h.state.save_status(st)
        h.state.save_target(target)
        h.state.audit(who, "rollback", service, to)
        given_up = reconcile.converge(h, services=[service])
        results = {service: _given_up(service, given_up) or reconcile.result_of(h, service)}
        _collect(h)
    return {"services": results}


def verb_remove(layout: Layout, service: str, who: str, log=None,
                lock: Optional[str] = None) -> dict:
    """Stop a service's containers, drop its published ports and forget its target."""
    from runtime import reconcile, snapshot
    _check_lock(layout, lock, "remove")
    h = make_host(layout, log)
    with h.state.flock("converge.lock"):
        snapshot.forget(layout.run)       # a reader asks the agent until serve writes anew
        reconcile.repair_lost_state(h)
        target = h.state.target()
        if service not in target and service not in h.state.status()["current"]:
            raise NotFound(f"{service}: not deployed on this host")
        old = (target.pop(service, None) or {}).get("release", "")
        h.state.save_target(target)
        h.state.audit(who, "remove", service, old)
        reconcile.converge(h, services=[service])
        h.state.save_secrets(service, {})      # its secret values leave the tmpfs and the disk
    return {"services": {service: {"ok": True, "removed": True, "release": None}}}


def _health(st: dict, name: str, m) -> str:
    """What serve's last probes say about the serving container, else whether it passed its
    check when it was started."""
    if m is None:
        return "unknown"
    rec = (st.get("health") or {}).get(name) or {}
    if rec.get("instance") == m.instance:
        return rec["state"]
    return "healthy" if m.instance in st["healthy"] else "unknown"


def verb_status(layout: Layout, req: dict) -> dict:
    from runtime import oci
    rt = oci.choose_runtime(layout.run)
    from runtime.state import State
    state = State(layout)
    st = state.status()
    target = state.target()
    metas = {(m.service, m.slot): m for m in meta.list_metas(layout)}
    out: Dict[str, Any] = {}
    for name in sorted(set(target) | set(st["current"])):
        cur = st["current"].get(name) or {}
        m = metas.get((name, cur.get("slot")))
        wanted = (target.get(name) or {}).get("release")
        entry = {"release": cur.get("release"), "slot": cur.get("slot"),
                 "state": meta.status_of(m, rt) if m else "missing",
                 "health": _health(st, name, m),
                 "since": cur.get("since"), "previous": list(st["history"].get(name) or []),
                 "wanted": wanted, "project": (target.get(name) or {}).get("project"),
                 "slots": {s: {"release": x.release, "state": meta.status_of(x, rt),
                               "ip": x.ip} for (n, s), x in sorted(metas.items()) if n == name}}
        why = (st["failed"].get(name) or {}).get(wanted)
        if why:
            entry["error"] = why
        restarts = (st["restarts"].get(f"{name}/{cur.get('slot')}") or [0, 0])[0]
        if m is not None and restarts and time.time() - m.created < RESTART_RESET_AFTER:
            entry["restarts"] = int(restarts)        # restarted lately: a crash loop, not serving
        out[name] = entry
    return {"services": out, "serve_pid": serve_pid(layout)}


def verb_exec(layout: Layout, service: str, command: List[str], tty: bool) -> int:
    """Run ``command`` in the serving container of ``service`` with this process's stdio (the
    SSH session's: with a terminal when ``tty``); its exit code is the verb's."""
    import subprocess

    from runtime import oci
    from runtime.state import State
    if not command:
        raise BadRequest("exec: expected a command after the service")
    cur = (State(layout).status().get("current") or {}).get(service)
    m = next((x for x in meta.list_metas(layout)
              if cur and x.service == service and x.slot == cur.get("slot")), None)
    if m is None or not oci.proc_alive(m.pid, m.starttime):
        raise NotFound(f"{service}: no serving container on this host")
    rt = meta.rt_of(m, oci.choose_runtime(layout.run))
    return subprocess.call(rt.base() + ["exec"] + (["--tty"] if tty else []) + [m.id] + command)


def verb_volumes(layout: Layout, req: dict) -> dict:
    """Every volume on the host with its owner and size (reads only)."""
    from runtime.volumes import list_volumes
    return {"volumes": list_volumes(layout) if os.path.isdir(layout.volumes) else []}


def _write_tail(path: str, tail: int, sink) -> int:
    """Write the last ``tail`` lines of ``path``; return the offset read up to."""
    try:
        with open(path, "rb") as f:
            data = f.read()
            pos = f.tell()
    except FileNotFoundError:
        data, pos = b"", 0
    lines = data.splitlines(keepends=True)
    sink.write(b"".join(lines[-tail:]) if tail > 0 else b"")
    sink.flush()
    return pos


def _write_from(path: str, pos: int, sink) -> None:
    try:
        with open(path, "rb") as f:
            f.seek(pos)
            sink.write(f.read())
            sink.flush()
    except FileNotFoundError:
        pass


def verb_logs(layout: Layout, service: str, tail: int, follow: bool, out) -> None:
    """Raw log text of the serving slot (stdout and stderr interleaved) on ``out``: the last
    ``tail`` lines, then, with ``follow``, whatever is appended until the caller hangs up; when
    a blue/green switch makes another slot the serving one, the rest of the old slot's log, a
    marker line, then the new slot's last ``tail`` lines and whatever it appends."""
    from runtime.state import State
    state = State(layout)
    cur = state.status()["current"].get(service)
    if not cur:
        raise NotFound(f"{service}: not running on this host")
    slot = cur["slot"]
    path = meta.log_path(layout, service, slot)
    sink = out.buffer if hasattr(out, "buffer") else out
    pos = _write_tail(path, tail, sink)
    while follow:
        time.sleep(0.25)
        now = state.status()["current"].get(service) or {}
        if now.get("slot") not in (None, slot):
            _write_from(path, pos, sink)
            slot = now["slot"]
            path = meta.log_path(layout, service, slot)
            sink.write(f"-- orch: {service} now serves from slot {slot} "
                       f"(release {now.get('release')}) --\n".encode())
            pos = _write_tail(path, tail, sink)
            continue
        try:
            with open(path, "rb") as f:
                if os.fstat(f.fileno()).st_size < pos:
                    pos = 0
                f.seek(pos)
                data = f.read()
                pos = f.tell()
        except FileNotFoundError:
            data = b""
        if data:
            sink.write(data)
            sink.flush()


def verb_lock(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    layout.ensure()
    holder = req.get("holder")
    if not holder:
        raise BadRequest("lock: expected {\"holder\": ..., \"ttl\": seconds}")
    token = req.get("token")
    out = {"ok": True, "lock": State(layout).lock(str(holder), float(req.get("ttl", 900)),
                                                  str(token) if token else None,
                                                  bool(req.get("force")))}
    if isinstance(req.get("observe"), dict):     # what apply reads once it holds the lock
        try:
            out["observe"] = verb_observe(layout, req["observe"])
        except Exception as exc:  # noqa: BLE001 - the lock is held: say so; orch observes again
            out["observe_error"] = f"{type(exc).__name__}: {exc}"[:500]
    return out


def verb_unlock(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    layout.ensure()
    prev = State(layout).unlock(str(req.get("token") or req.get("holder") or ""),
                                bool(req.get("force")))
    out = {"ok": True, "released": prev}
    if req.get("status"):              # what the host runs as the lock goes (apply's last read)
        out["status"] = verb_status(layout, {})
    return out


def verb_audit(layout: Layout, req: dict) -> dict:
    from runtime.state import State
    return {"lines": State(layout).audit_lines()}




def _collect(h, take_lock: bool = False) -> None:
    """Garbage after a change: never fails the change itself. The caller holds the converge
    lock, or ``take_lock`` (the finisher, once apply has answered): it is taken here and the
    snapshot forgotten first (``gc.run_gc``)."""
    from runtime import gc
    try:
        (gc.run_gc if take_lock else gc.collect)(h)
    except Exception as exc:  # noqa: BLE001 - reported, the next change collects again
        h.log(f"gc: {type(exc).__name__}: {exc}")


def verb_gc(layout: Layout, req: dict) -> dict:
    from runtime import gc
    _check_lock(layout, req.get("lock"), "gc")
    return gc.run_gc(make_host(layout))
