"""`orch apply` end to end on a real lab fleet (2 amd64 + 1 arm64): build, ship, blue/green, waves."""
from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.errors import LockHeldError
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO, fleet_lab_home

LAB = f"test-apply-{secrets.token_hex(2)}"


def write_fleet(directory: Path) -> None:
    (directory / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 2, arm64: 1}}\n")


@pytest.fixture(scope="module")
def lab_project(tmp_path_factory):
    """A copy of the default manifests aimed at this module's own lab; removed afterwards."""
    directory = tmp_path_factory.mktemp("project") / "manifests"
    shutil.copytree(REPO / "manifests", directory)
    write_fleet(directory)
    with fleet_lab_home(LAB, tmp_path_factory.mktemp("orch-home")):
        yield directory


def run_apply(directory: Path, **kw):
    prep = prepare(str(directory), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        report = apply(prep, obs, pool, **kw)
    return prep, obs.plan, report


def why(report) -> dict:
    """What made an apply not ok, compactly (for assertion messages)."""
    plan = report.plan
    return {"failed_hosts": plan.failed_hosts,
            "host_errors": {hp.host: hp.error for hp in plan.hosts if getattr(hp, "error", None)},
            "ship_failed": report.ship_failed, "lost": report.lost,
            "remove_failed": report.remove_failed,
            "outcomes": [(o.host, o.error) for o in (report.rollout.outcomes if report.rollout else [])
                         if getattr(o, "error", None)]}


def fetch(address: str, path: str = "/", timeout: float = 2.0) -> bytes:
    with urllib.request.urlopen(f"http://{address}:8080{path}", timeout=timeout) as resp:
        assert resp.status == 200
        return resp.read()


class Hammer:
    """A client loop against every host while something else happens; counts failures."""

    def __init__(self, addresses):
        self.addresses = list(addresses)
        self.ok = 0
        self.failures = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for a in self.addresses:
                try:
                    fetch(a, "/style.css")
                    self.ok += 1
                except Exception as exc:  # noqa: BLE001 - every failure counts
                    self.failures.append(f"{a}: {exc}")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)


def test_first_apply_serves_the_page_on_every_host(lab_project):
    prep, plan, report = run_apply(lab_project)
    assert report.ok, report
    assert {hp.platform for hp in plan.hosts} == {"linux/amd64", "linux/arm64"}
    for host in prep.hosts:
        assert b"Hello from orch" in fetch(host.target.address)
    arm = next(hp for hp in plan.hosts if hp.platform == "linux/arm64")
    amd_manifest = next(c.manifest for hp in plan.hosts if hp.platform == "linux/amd64" for c in hp.changes)
    assert amd_manifest not in {d for d, _ in arm.blobs}          # an arm host never gets amd64 blobs
    assert all(r == {"hello": report.final[h]["hello"]} for h, r in report.final.items())


def test_an_unreachable_host_is_reported_and_a_later_apply_converges_it(lab_project):
    import subprocess

    from orchestrator.lab.layout import LabLayout, LabSpec

    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* while one host is away {secrets.token_hex(4)} */\n")
    layout = LabLayout(LabSpec(LAB))
    away = layout.hosts()[1]
    subprocess.run(["ip", "link", "set", away.veth_root, "down"], check=True)   # its uplink drops
    try:
        prep = prepare(str(lab_project), {})
        prep.hosts = [h if h.name != away.name else h.__class__(
            h.name, h.target.__class__(**{**h.target.__dict__, "connect_timeout": 2.0}), h.labels, h.platform)
            for h in prep.hosts]
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = observe(prep, pool)
            report = apply(prep, obs, pool)
        assert not report.ok
        assert report.plan.failed_hosts == (away.name,)
        new = {hp.changes[0].new_release for hp in report.plan.hosts if hp.changes}
        assert len(new) == 1
        for host in prep.hosts:
            if host.name != away.name:
                assert report.final[host.name]["hello"] in new
    finally:
        subprocess.run(["ip", "link", "set", away.veth_root, "up"], check=True)
    prep2, plan2, report2 = run_apply(lab_project)
    assert report2.ok, why(report2)
    # only the one that missed it changes (the plan made under the lock: right after its link
    # comes back, the host may not answer the first observe yet, and is then locked late)
    assert [hp.host for hp in report2.plan.hosts if hp.changes] == [away.name]
    assert {r["hello"] for r in report2.final.values()} == new


def test_one_file_change_ships_only_that_layer_with_zero_failed_requests(lab_project):
    before = prepare(str(lab_project), {})
    old_layers = {p: {l["digest"] for l in before.store.read_json(m)["layers"]}
                  for p, m in before.releases[0].manifests.items()}
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* change {secrets.token_hex(4)} */\n")
    prep = prepare(str(lab_project), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        for hp in obs.plan.hosts:
            assert len(hp.changes) == 1
            manifest = prep.store.read_json(hp.changes[0].manifest)
            changed = {l["digest"] for l in manifest["layers"]} - old_layers[hp.platform]
            assert len(changed) == 1, "a one-file change must change exactly one layer"
            expected = {hp.changes[0].manifest, manifest["config"]["digest"]} | changed
            assert {d for d, _ in hp.blobs} == expected, "more than the changed layer would travel"
        with Hammer(h.target.address for h in prep.hosts) as hammer:
            report = apply(prep, obs, pool)
            time.sleep(0.5)
    assert report.ok
    assert hammer.ok > 20 and hammer.failures == []
    for host, shipped in report.shipped.items():
        hp = report.plan.host(host)
        assert shipped.bytes_sent == sum(size for _, size in hp.blobs) + _frame_overhead(hp.blobs)


def _frame_overhead(blobs):
    from runtime.protocol import frame_header
    return sum(len(frame_header(d, s, 0)) for d, s in blobs)


def test_third_apply_changes_nothing(lab_project):
    prep, plan, report = run_apply(lab_project)
    assert plan.up_to_date and report.rollout is None and report.shipped == {}


def journal(host_name: str) -> list:
    """The host agent's step journal (state/journal.log), one dict per line."""
    import json

    from orchestrator.lab.layout import LabLayout, LabSpec
    path = LabLayout(LabSpec(LAB)).host(host_name).var_lib_orch / "state" / "journal.log"
    return [json.loads(line) for line in path.read_text().splitlines()]


def prepared_metas(host_name: str) -> list:
    import json

    from orchestrator.lab.layout import LabLayout, LabSpec
    root = LabLayout(LabSpec(LAB)).host(host_name).var_lib_orch / "containers"
    metas = [json.loads(p.read_text()) for p in root.glob("*/meta.json")]
    return [m for m in metas if m.get("prepared")]


def wait_settled(names, timeout: float = 20.0) -> None:
    """Until the previous change's old slots are gone (their 2 s drain, then the stop): a
    change within the drain waits for them, and nothing is prepared then."""
    from orchestrator.lab.layout import LabLayout, LabSpec
    layout = LabLayout(LabSpec(LAB))
    deadline = time.monotonic() + timeout
    while any(len(list((layout.host(n).var_lib_orch / "containers").glob("*/meta.json"))) > 1
              for n in names) and time.monotonic() < deadline:
        time.sleep(0.2)


def serving_meta(host_name: str) -> dict:
    import json

    from orchestrator.lab.layout import LabLayout, LabSpec
    root = LabLayout(LabSpec(LAB)).host(host_name).var_lib_orch
    current = json.loads((root / "state" / "status.json").read_text())["current"]["hello"]
    return next(json.loads(p.read_text()) for p in (root / "containers").glob("*/meta.json")
                if json.loads(p.read_text())["slot"] == current["slot"])


def serving_pids(host_name: str) -> list:
    """The serving container's init and every process under it, on the machine's pid numbers."""
    pids, todo = [], [serving_meta(host_name)["pid"]]
    while todo:
        pid = todo.pop()
        pids.append(pid)
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                todo += [int(c) for c in open(f"/proc/{pid}/task/{task}/children").read().split()]
            except OSError:
                pass
    return pids


def nice_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[16])


def test_later_waves_are_made_while_the_canary_runs_and_only_started_in_their_wave(lab_project):
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* prepared {secrets.token_hex(4)} */\n")
    names = [h.name for h in prepare(str(lab_project), {}).hosts]
    wait_settled(names)
    seen = {n: len(journal(n)) for n in names}
    prep, plan, report = run_apply(lab_project)
    assert report.ok, why(report)
    canary = plan.waves[0].hosts[0]
    steps = {n: journal(n)[seen[n]:] for n in names}
    switched = next(e["t"] for e in steps[canary] if e["step"] == "Switch" and e["phase"] == "done")
    assert "Start" in [e["step"] for e in steps[canary]]
    assert "Prepare" not in [e["step"] for e in steps[canary]]
    for n in names:
        if n == canary:
            continue
        made = next(e for e in steps[n] if e["step"] == "Prepare" and e["phase"] == "begin")
        begun = next(e for e in steps[n] if e["step"] == "Begin" and e["phase"] == "begin")
        assert made["t"] < switched < begun["t"]          # made while the canary ran, started after
        assert made["release"] == report.final[n]["hello"]
        assert not any(e["step"] == "Start" for e in steps[n])     # not made a second time
        assert prepared_metas(n) == []                      # what began is no longer held
        # made at a background priority, it serves at the agent's own
        assert {nice_of(pid) for pid in serving_pids(n)} == {0}
        # and counts as started when it began (its settle window, its restart records)
        assert serving_meta(n)["created"] >= begun["t"] - 0.01
    for host in prep.hosts:
        assert css.read_bytes() == fetch(host.target.address, "/style.css")


def test_failing_canary_halts_with_no_other_host_changed(lab_project, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(lab_project, bad)
    text = (bad / "hello.yaml").read_text().replace("health: {http: /,", "health: {http: /no-such-page,")
    (bad / "hello.yaml").write_text(text.replace("on_failure: rollback", "on_failure: halt"))
    before = run_apply(lab_project)[2].final
    names = list(before)
    wait_settled(names)
    seen = {n: len(journal(n)) for n in names}
    prep, plan, report = run_apply(bad)
    assert not report.ok and "canary failed" in report.rollout.halted
    assert report.final == before                          # every host still runs the old release
    for host in prep.hosts:
        assert b"Hello from orch" in fetch(host.target.address)
    # the later hosts had their container made while the canary ran; it never started, and
    # it goes once the lock is released (serve stops it within a tick)
    later = [n for n in names if n != plan.waves[0].hosts[0]]
    for n in later:
        steps = [e["step"] for e in journal(n)[seen[n]:]]
        assert "Prepare" in steps and "Begin" not in steps and "Start" not in steps
        for meta in prepared_metas(n):      # what holds it is the lock token's hash, not the token
            assert len(meta["prepared"]) == 32 and int(meta["prepared"], 16) >= 0
    deadline = time.monotonic() + 10
    while any(prepared_metas(n) for n in later) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert [prepared_metas(n) for n in later] == [[] for _ in later]


def test_second_apply_refuses_while_the_fleet_is_locked(lab_project):
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* locked change {secrets.token_hex(4)} */\n")
    prep = prepare(str(lab_project), {})
    leader, other = sorted(h.name for h in prep.hosts)[:2]
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        obs.clients[leader].lock("alice@ci pid 42", 600, "t-alice")
        try:
            with pytest.raises(LockHeldError, match="alice@ci pid 42"):
                apply(prep, obs, pool)
            assert _lock_on(other) is None                 # refused at the first host: nothing else taken
        finally:
            obs.clients[leader].unlock("t-alice")
        obs.clients[other].lock("bob@ci pid 43", 600, "t-bob")   # stale: bob does not hold the leader
        report = apply(prep, obs, pool)
    assert report.ok
    assert all(_lock_on(h.name) is None for h in prep.hosts)   # released everywhere


def _lock_on(host_name: str):
    import json

    from orchestrator.lab.layout import LabLayout, LabSpec
    path = LabLayout(LabSpec(LAB)).host(host_name).var_lib_orch / "state" / "lock.json"
    return json.loads(path.read_text()) if path.exists() else None


def _wait_for_lock(host_name: str, timeout: float = 120.0) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        held = _lock_on(host_name)
        if held:
            return held
        time.sleep(0.05)
    raise AssertionError(f"nobody took the lock on {host_name}")


def test_rollback_during_an_apply_is_refused_and_names_the_holder(lab_project):
    run_apply(lab_project)
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* during rollback {secrets.token_hex(4)} */\n")
    prep = prepare(str(lab_project), {})
    leader = sorted(h.name for h in prep.hosts)[0]
    out = {}

    def background():
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            out["report"] = apply(prep, observe(prep, pool), pool, who="carol@ci")

    t = threading.Thread(target=background)
    t.start()
    try:
        assert "carol@ci" in _wait_for_lock(leader)["holder"]
        back = orch_cli("rollback", "hello", str(lab_project))
    finally:
        t.join(300)
    assert back.returncode == 10, (back.stdout, back.stderr)          # LockHeldError
    assert "carol@ci" in back.stderr
    report = out["report"]
    assert report.ok, report
    assert len({r["hello"] for r in report.final.values()}) == 1       # one release everywhere
    assert report.final == run_apply(lab_project)[2].final             # and it is the manifests'


def test_two_concurrent_applies_one_proceeds_one_is_refused(lab_project, tmp_path):
    stamp = secrets.token_hex(4)
    variants = {who: _variant(lab_project, tmp_path, who, lambda t, w=who: t) for who in ("ann", "ben")}
    for who, d in variants.items():
        css = d / "hello" / "www" / "style.css"
        css.write_text(css.read_text() + f"\n/* {who} {stamp} */\n")
    preps = {who: prepare(str(d), {}) for who, d in variants.items()}
    barrier = threading.Barrier(2)
    results = {}

    def one(who):
        prep = preps[who]
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = observe(prep, pool)
            barrier.wait()
            try:
                results[who] = apply(prep, obs, pool, who=f"{who}@ci")
            except LockHeldError as exc:
                results[who] = exc

    threads = [threading.Thread(target=one, args=(w,)) for w in preps]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    refused = [w for w, r in results.items() if isinstance(r, LockHeldError)]
    assert len(refused) == 1, results
    winner = next(w for w in results if w not in refused)
    assert f"{winner}@ci" in str(results[refused[0]])                   # names who holds it
    assert results[winner].ok
    wanted = preps[winner].releases[0].release
    assert {r["hello"] for r in results[winner].final.values()} == {wanted}
    assert all(_lock_on(h.name) is None for h in preps[winner].hosts)


def test_a_crash_loop_fails_the_apply_by_name_and_its_neighbour_keeps_serving(lab_project, tmp_path):
    import json

    from orchestrator.fleet.lock import mutating

    run_apply(lab_project)
    mark = secrets.token_hex(4)
    variant = _variant(lab_project, tmp_path, "crashy", lambda t: t)
    css = variant / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* beside crashy {mark} */\n")
    (variant / "crashy.yaml").write_text(
        "kind: Service\nname: crashy\nimage:\n  from: {debian: bookworm, packages: [busybox-static]}\n"
        "  platforms: [linux/amd64, linux/arm64]\n"
        f"  cmd: [/bin/busybox, sh, -c, 'echo up-{mark}; sleep 2; echo dying-{mark}; exit 3']\n"
        "deploy:\n  hosts: [amd64-1]\n")
    try:
        for attempt in ("first", "again"):                      # a later apply does not call it ok either
            res = orch_cli("apply", str(variant), "--json")
            assert res.returncode == 11, (attempt, res.stdout[-2000:], res.stderr)
            assert "crashy" in res.stderr
            summary = json.loads(res.stdout)
            outcomes = {(o["host"], o["service"]): o for o in summary["outcomes"]}
            crashy = outcomes[("amd64-1", "crashy")]
            assert not crashy["ok"] and "exited" in crashy["error"] and f"dying-{mark}" in crashy["error"]
            if attempt == "first":                           # hello changed: ok everywhere, amd64-1 too
                assert all(outcomes[(h, "hello")]["ok"] for h in ("amd64-1", "amd64-2", "arm64-1"))
            assert f"beside crashy {mark}".encode() in fetch(_address("amd64-1"), "/style.css")
    finally:
        prep = prepare(str(variant), {})
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = observe(prep, pool)
            with mutating(obs.clients, "test") as lock:
                obs.clients["amd64-1"].remove("crashy", "test", lock=lock.token)


def _address(host_name: str) -> str:
    from orchestrator.lab.layout import LabLayout, LabSpec
    return LabLayout(LabSpec(LAB)).host(host_name).address


def _silence(host_name: str, on: bool) -> None:
    """Drop every packet that reaches the host (inside its own namespace): it goes silent, no
    reset, no ICMP, as a host on a dead link does."""
    import subprocess

    from orchestrator.lab.layout import LabLayout, LabSpec
    ns = LabLayout(LabSpec(LAB)).host(host_name).netns
    if on:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], check=True, input=(
            "table inet orchtestdrop {\n chain in { type filter hook input priority -300; policy drop; }\n"
            " chain out { type filter hook output priority -300; policy drop; }\n}\n").encode())
    else:
        subprocess.run(["ip", "netns", "exec", ns, "nft", "delete", "table", "inet", "orchtestdrop"],
                       check=False)


def test_a_host_that_goes_silent_mid_rollout_is_dropped_by_name_in_bounded_time(lab_project):
    from orchestrator.fleet.rollout import apply_deadline

    run_apply(lab_project)
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* silent host {secrets.token_hex(4)} */\n")
    prep = prepare(str(lab_project), {})
    names = sorted(h.name for h in prep.hosts)
    victim = names[-1]
    host_timeout = 10.0
    bound = host_timeout + apply_deadline(prep.releases[0].deploy, host_timeout) + 60   # + the others' rollback
    seen = {}

    def on_event(line: str) -> None:
        if line.startswith(f"{names[0]}: hello ok") and "silenced" not in seen:   # after the canary
            _silence(victim, True)
            seen["silenced"] = time.monotonic()

    try:
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = observe(prep, pool)
            report = apply(prep, obs, pool, on_event=on_event, host_timeout=host_timeout)
            took = time.monotonic() - seen["silenced"]
        print(f"silent host dropped: apply returned {took:.1f} s after the drop (bound {bound:.0f} s)")
        assert took < bound
        assert not report.ok
        failed = {o.host: o for o in report.rollout.outcomes if not o.ok}
        assert victim in failed and "timed out" in failed[victim].error
        assert report.final[victim]["hello"] == "unreachable"
        assert all(_lock_on(h) is None for h in names if h != victim)       # released where it can be
    finally:
        _silence(victim, False)
    prep2, plan2, report2 = run_apply(lab_project)                         # the drop lifted: converges
    assert report2.ok, report2
    assert len({r["hello"] for r in report2.final.values()}) == 1
    assert all(_lock_on(h) is None for h in names)


def test_a_corrupted_blob_is_sent_again_and_lost_state_files_stop_nothing(lab_project):
    from orchestrator.lab.layout import LabLayout, LabSpec

    run_apply(lab_project)
    victim = LabLayout(LabSpec(LAB)).host("amd64-2")
    address = victim.address
    css = lab_project / "hello" / "www" / "style.css"
    css.write_text(css.read_text() + f"\n/* after corruption {secrets.token_hex(4)} */\n")
    assert run_apply(lab_project)[2].ok
    # 1. a blob the next release needs, damaged on the host (as a failing disk would): a
    # deploy-only change keeps the image, so the release needs its manifest and config again.
    # (Layers are not blobs on the host once stored: the layer store stands for them.)
    prep = prepare(str(lab_project), {})
    manifest = prep.store.read_json(prep.releases[0].manifests["linux/amd64"])
    config = manifest["config"]["digest"]
    blob = victim.var_lib_orch / "blobs" / "sha256" / config.split(":")[1]
    assert blob.exists()
    for layer in manifest["layers"]:
        assert not (victim.var_lib_orch / "blobs" / "sha256" / layer["digest"].split(":")[1]).exists()
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    hello = lab_project / "hello.yaml"
    spec_text = hello.read_text()
    hello.write_text(spec_text.replace("  drain: 2s\n", "  drain: 1s\n"))
    try:
        report = run_apply(lab_project)[2]
    finally:
        hello.write_text(spec_text)
    assert report.ok, report
    assert report.shipped["amd64-2"].blobs == 1, report.shipped   # the damaged config, again
    assert hashlib.sha256(blob.read_bytes()).hexdigest() == config.split(":")[1]
    assert b"after corruption" in fetch(address, "/style.css")
    assert run_apply(lab_project)[2].ok                           # back to drain 2s
    # 2. the agent's target, then its status, lost while it serves: nothing stops
    for name in ("target.json", "status.json"):
        with Hammer([address]) as hammer:
            (victim.var_lib_orch / "state" / name).unlink()
            time.sleep(4)                                          # serve ticks many times meanwhile
        assert hammer.ok > 10 and hammer.failures == [], (name, hammer.failures[:3])
        assert (victim.var_lib_orch / "state" / name).exists()     # rebuilt from what runs
        again = run_apply(lab_project)
        assert again[2].ok and again[1].up_to_date, name
        assert b"after corruption" in fetch(address, "/style.css")


def test_a_rotated_secret_reaches_a_non_root_container_and_no_value_is_written_anywhere(lab_project, tmp_path):
    import subprocess

    from orchestrator.lab.layout import LabLayout, LabSpec

    variant = _variant(lab_project, tmp_path, "reader", lambda t: t)
    (variant / "reader.yaml").write_text(
        "kind: Service\nname: reader\nimage:\n  from: {debian: bookworm, packages: [busybox-static]}\n"
        "  platforms: [linux/amd64, linux/arm64]\n  user: \"65534:65534\"\n"
        "  cmd: [/bin/busybox, httpd, -f, -p, \"8081\", -h, /run/secrets]\n"
        "deploy:\n  hosts: [amd64-1]\n  ports: [\"8082:8081\"]\n"
        "  secrets: {token: {env: ORCH_TEST_TOKEN, dest: /run/secrets/token}}\n"
        "  health: {http: /token, port: 8081, interval: 1s, timeout: 1s, retries: 3}\n")
    address = _address("amd64-1")
    values = [f"old-{secrets.token_hex(8)}", f"new-{secrets.token_hex(8)}"]
    outputs = []
    try:
        for value in values:
            os.environ["ORCH_TEST_TOKEN"] = value
            for args in (("plan", "--json"), ("plan",), ("apply",)):
                res = orch_cli(*args, str(variant))
                outputs.append(res.stdout + res.stderr)
            assert res.returncode == 0, res.stderr               # the non-root user passed its health check
            with urllib.request.urlopen(f"http://{address}:8082/token", timeout=5) as resp:
                assert resp.read() == value.encode()             # the rotated value reached the container
        import re
        rels = [re.search(r"reader=(r-[0-9a-f]+)", outputs[i]).group(1) for i in (2, 5)]
        assert rels[0] != rels[1]                                # a new value is a new release
        outputs.append(orch_cli("audit", str(variant), "--json").stdout)
        outputs.append(orch_cli("logs", "reader", "--host", "amd64-1", str(variant)).stdout)
        for value in values:
            assert all(value not in out for out in outputs)
            for host in LabLayout(LabSpec(LAB)).hosts():
                hits = subprocess.run(["grep", "-rlF", "--", value, str(host.var_lib_orch)],
                                      capture_output=True, text=True).stdout.split()
                assert hits == [], f"{value[:3]} found on {host.name} in {hits}"
            assert subprocess.run(["grep", "-rlF", "--", value, os.environ["ORCH_HOME"]],
                                  capture_output=True, text=True).stdout == ""
    finally:
        os.environ.pop("ORCH_TEST_TOKEN", None)
        from orchestrator.fleet.lock import mutating
        prep = prepare(str(lab_project), {})
        with ConnectionPool(h.target for h in prep.hosts) as pool:
            obs = observe(prep, pool)
            with mutating(obs.clients, "test") as lock:
                obs.clients["amd64-1"].remove("reader", "test", lock=lock.token)


def _variant(lab_project: Path, tmp_path: Path, name: str, edit) -> Path:
    out = tmp_path / name
    shutil.copytree(lab_project, out)
    manifest = out / "hello.yaml"
    manifest.write_text(edit(manifest.read_text()))
    return out


def test_rollback_policy_reverts_the_first_wave_when_the_second_fails(lab_project, tmp_path):
    """Health passes only where /flag/ok exists in the host's volume: the canary host."""
    from orchestrator.lab.layout import LabLayout, LabSpec

    def edit(text):
        text = text.replace("health: {http: /, port: 80,", "volumes: [\"flag:/flag:ro\"]\n  health: {exec: "
                            "[/bin/busybox, test, -e, /flag/ok],")
        return re.sub(r"max_parallel: [^,]+,", "max_parallel: 1,", text)      # a wave per host
    variant = _variant(lab_project, tmp_path, "flagged", edit)
    before = run_apply(lab_project)[2].final
    prep = prepare(str(variant), {})
    canary = prep.hosts[0].name
    flag = LabLayout(LabSpec(LAB)).host(canary).var_lib_orch / "volumes" / "flag"
    flag.mkdir(parents=True, exist_ok=True)
    (flag / "ok").write_text("yes")
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        assert [w.hosts for w in obs.plan.waves] == [(canary,), (prep.hosts[1].name,), (prep.hosts[2].name,)]
        report = apply(prep, obs, pool)
    assert not report.ok and "wave 1 failed" in report.rollout.halted
    outcomes = {o.host: o for o in report.rollout.outcomes}
    assert outcomes[canary].ok and outcomes[canary].reverted
    assert not outcomes[prep.hosts[1].name].ok
    assert prep.hosts[2].name not in outcomes                       # the third host was never touched
    assert report.final == before                                   # the whole fleet is back where it was
    for host in prep.hosts:
        assert b"Hello from orch" in fetch(host.target.address)


def test_a_secret_reaches_the_container_but_no_layer_log_or_audit_line(lab_project, tmp_path):
    import subprocess

    from orchestrator.lab.layout import LabLayout, LabSpec

    value = f"s3cret-{secrets.token_hex(8)}"

    def edit(text):
        text = text.replace("health: {http: /, port: 80,",
                            "secrets: {token: {env: ORCH_TEST_TOKEN}}\n"
                            f"  health: {{exec: [/bin/busybox, grep, -q, {value}, /run/secrets/token],")
        return text.replace("monitor: 2s", "monitor: 0s")
    variant = _variant(lab_project, tmp_path, "with-secret", edit)
    prep, plan, report = (lambda p: (p,) + _apply_with_env(p, {"ORCH_TEST_TOKEN": value}))(prepare(str(variant), {}, environ={"ORCH_TEST_TOKEN": value}))
    assert report.ok, report.rollout        # the health check itself proves the container reads the value
    needle = value.encode()
    for host in LabLayout(LabSpec(LAB)).hosts():
        root = host.var_lib_orch
        assert (root / "blobs").is_dir() and (root / "images").is_dir() and (root / "state" / "audit.log").is_file()
        hits = subprocess.run(["grep", "-rl", "--", value, str(root / "blobs"), str(root / "images"),
                               str(root / "agent"), str(root / "state" / "audit.log")],
                              capture_output=True, text=True).stdout.split()
        assert hits == [], f"secret found on {host.name} in {hits}"
    store_hits = subprocess.run(["grep", "-rl", "--", value, prep.store.root], capture_output=True, text=True)
    assert store_hits.stdout == ""
    assert needle not in repr(report).encode()


def _apply_with_env(prep, environ):
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        report = apply(prep, obs, pool, environ=environ)
    return obs.plan, report


def orch_cli(*args):
    import subprocess
    import sys
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=600)


def test_bad_manifest_is_refused_with_its_location_and_changes_nothing(lab_project, tmp_path):
    import json

    bad = _variant(lab_project, tmp_path, "typo", lambda t: t.replace('ports: ["8080:80"]', 'ports: ["80"]'))
    before = orch_cli("status", str(lab_project), "--json").stdout
    res = orch_cli("apply", str(bad))
    assert res.returncode == 3
    assert "hello.yaml:" in res.stderr and "deploy/ports/0" in res.stderr and '"80"' in res.stderr
    assert json.loads(orch_cli("status", str(lab_project), "--json").stdout) == json.loads(before)


def test_zz_lab_down_after_a_busy_run_leaves_no_container_mount_or_process(lab_project, tmp_path):
    """Last in the module: takes the module's lab down (the fixture's own down then finds nothing)."""
    import subprocess

    from orchestrator.lab.layout import LabLayout, LabSpec
    from orchestrator.lab.machine import LabMachine

    variant = _variant(lab_project, tmp_path, "busy", lambda t: t)
    (variant / "crashy.yaml").write_text(
        "kind: Service\nname: crashy\nimage:\n  from: {debian: bookworm, packages: [busybox-static]}\n"
        "  platforms: [linux/amd64, linux/arm64]\n  cmd: [/bin/busybox, sh, -c, 'sleep 1; exit 3']\n"
        "deploy:\n  hosts: all\n  strategy: {max_parallel: 3}\n")
    import sys
    res = subprocess.run([sys.executable, "-m", "orchestrator.cli", "apply", str(variant)], cwd=REPO,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    out = res.stdout                                                # stdout and stderr in one pipe, as in CI
    assert res.returncode == 11, out
    import re
    plan_line, wave_line, summary = (out.index("+ crashy: install"),
                                     re.search(r"crashy: (canary|wave \d+) ->", out).start(),
                                     out.index("now running:"))
    assert plan_line < wave_line < summary, out                     # in the order things happened
    layout = LabLayout(LabSpec(LAB))
    ids = [(h.var_lib_orch / "state" / "host-id").read_text().strip() for h in layout.hosts()]
    time.sleep(2)                                                   # serve is restarting crashy now
    LabMachine(layout).down()
    time.sleep(3)                                                   # a racing serve would have recreated by now
    left = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cg = open(f"/proc/{pid}/cgroup").read()
        except OSError:
            continue
        left += [pid for hid in ids if f"o{hid}-" in cg]
    assert left == [], f"container processes left: {left}"
    mounts = [line for line in open("/proc/self/mountinfo") if str(layout.state_dir) in line]
    assert mounts == []
    assert not layout.state_dir.exists()
