"""deploy: {network: host} on a real lab host, through orch plan and apply: the service serves
on the host's own address (no DNAT, no veth), a change replaces it stop-first (never two slots,
sampled while apply runs), the plan says so and why, and a bridged service beside it keeps
serving and still cannot reach it (nothing from the bridge reaches the host)."""
from __future__ import annotations

import json
import secrets
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.fleet.report import render_plan
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO, fleet_lab_home
from tests.runtime import imagekit as ik

pytestmark = pytest.mark.lab

LAB = f"test-hnet-{secrets.token_hex(2)}"
EDGE_PORT, WEB_PORT = 8480, 8481
RUNTIME = ["crun", "--root", "/run/orch/crun"]   # a plain lab host runs crun (lab/hostinit.py)
STOP_SAMPLING = "/tmp/orch-test-stop-sampling"
# Runs on the host: one line per sample with the container ids crun lists, every 20 ms, until
# STOP_SAMPLING exists (or 120 s pass). Sampling on the host, not one SSH command per sample,
# gives hundreds of samples even on a loaded machine.
SAMPLER = ("end=$(($(date +%s) + 120)); "
           f"while [ ! -e {STOP_SAMPLING} ] && [ $(date +%s) -lt $end ]; do "
           f"echo \"sample $({' '.join(RUNTIME)} list -q | tr '\\n' ' ')\"; sleep 0.02; done")

EDGE = f"""kind: Service
name: edge
image:
  from: {{debian: bookworm, packages: [busybox-static]}}
  platforms: [linux/amd64]
  steps:
    - copy: {{src: edge, dest: /srv/www}}
  cmd: [/bin/busybox, httpd, -f, -p, "{EDGE_PORT}", -h, /srv/www]
deploy:
  network: host
  ports: ["{EDGE_PORT}:{EDGE_PORT}"]
  health: {{http: /, interval: 1s, timeout: 1s, retries: 3}}
  stop_timeout: 5s
  strategy: {{canary: 0, max_parallel: 1}}
"""


def web_service() -> str:
    text = (REPO / "manifests" / "hello.yaml").read_text()
    text = text.replace("name: hello", "name: web").replace('"8080:80"', f'"{WEB_PORT}:80"')
    text = text.replace("platforms: [linux/amd64, linux/arm64]", "platforms: [linux/amd64]")
    return text.replace("strategy: {canary: 1, max_parallel: 1, monitor: 2s, on_failure: rollback}",
                        "strategy: {canary: 0, max_parallel: 1}").replace("drain: 2s", "drain: 0s")


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("hnet")
    d = root / "manifests"
    d.mkdir()
    shutil.copytree(REPO / "manifests" / "hello", d / "hello")
    shutil.copy(REPO / "manifests" / "orch.lock", d / "orch.lock")
    (d / "edge").mkdir()
    (d / "edge" / "index.html").write_text("edge v1\n")
    (d / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\nlab: {{hosts: 1, arm64: 0}}\n")
    (d / "edge.yaml").write_text(EDGE)
    (d / "web.yaml").write_text(web_service())
    with fleet_lab_home(LAB, root / "home"):
        yield d


def plan_and_apply(directory: Path, during=None):
    prep = prepare(str(directory), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        text = render_plan(obs.plan)
        report = apply(prep, obs, pool)
    return prep, text, report


def get(address: str, port: int) -> bytes:
    with urllib.request.urlopen(f"http://{address}:{port}/", timeout=3) as resp:
        return resp.read()


def run(pool, host: str, argv, timeout: float = 30):
    res = pool.get(host).run(list(argv), timeout=timeout)
    return res.exit_code, res.stdout.decode(errors="replace"), res.stderr.decode(errors="replace")


def test_a_host_network_service_serves_on_the_host_and_is_replaced_stop_first(project):
    prep, text, report = plan_and_apply(project)
    assert report.ok, report
    host = prep.hosts[0]
    address, name = host.target.address, host.name
    assert get(address, EDGE_PORT) == b"edge v1\n"            # the host's own address and port
    assert b"Hello" in get(address, WEB_PORT)

    with ConnectionPool([host.target]) as pool:
        rc, out, err = run(pool, name, ["nft", "-j", "list", "map", "ip", "orch", "tcp_ports"])
        assert rc == 0, err
        published = [e[0] for item in json.loads(out)["nftables"] if "map" in item
                     for e in item["map"].get("elem", [])]
        assert published == [WEB_PORT], out                   # no DNAT for the host-network one
        rc, out, err = run(pool, name, RUNTIME + ["list", "-f", "json"])
        ids = {c["id"].rsplit("-", 2)[-2]: c for c in json.loads(out)}
        edge_pid, web_pid = ids["edge"]["pid"], ids["web"]["pid"]
        rc, mine, _ = run(pool, name, ["readlink", "/proc/self/ns/net"])
        rc, edge_ns, _ = run(pool, name, ["readlink", f"/proc/{edge_pid}/ns/net"])
        rc, web_ns, _ = run(pool, name, ["readlink", f"/proc/{web_pid}/ns/net"])
        assert edge_ns == mine and web_ns != mine             # the host's namespace, no veth
        # the bridged container cannot reach it: nothing from the bridge reaches the host
        rc, out, err = run(pool, name, RUNTIME + ["exec", ids["web"]["id"], "/bin/busybox", "wget",
                                               "-T", "2", "-q", "-O-",
                                               f"http://10.88.0.1:{EDGE_PORT}/"])
        assert rc != 0 and "edge v1" not in out, (rc, out, err)

        # a change: the plan says stop-first and why; apply never runs two slots of edge
        (project / "edge" / "index.html").write_text("edge v2\n")
        run(pool, name, ["rm", "-f", STOP_SAMPLING])
        sampled = {}

        def sample():
            with ConnectionPool([host.target]) as own:
                sampled["out"] = run(own, name, ["sh", "-c", SAMPLER], timeout=150)[1]

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        time.sleep(1.0)                                       # the sampler is running
        with ik.Hammer(address, WEB_PORT) as web_loop:
            prep, text, report = plan_and_apply(project)
        time.sleep(0.5)
        run(pool, name, ["touch", STOP_SAMPLING])
        sampler.join(30)
        seen_slots = [sorted(c for c in line.split()[1:] if "-edge-" in c)
                      for line in sampled.get("out", "").splitlines() if line.startswith("sample")]
        assert report.ok, [o.error for o in report.rollout.outcomes]
        assert "~ edge:" in text and "stop-first: network: host, two slots cannot share " \
                                     "the host's ports" in text, text
        assert "~ web" not in text
        assert get(address, EDGE_PORT) == b"edge v2\n"
        assert len(seen_slots) > 10 and max(len(s) for s in seen_slots) == 1, seen_slots
        assert {s[0][-1] for s in seen_slots if s} == {"a", "b"}     # both slots were observed
        assert web_loop.failed == [] and web_loop.ok > 20, (web_loop.ok, web_loop.failed[:3])

        rc, out, err = run(pool, name, ["cat", "/var/lib/orch/state/journal.log"])
        steps = [(r.get("step"), r.get("slot"), r.get("why")) for r in map(json.loads, out.splitlines())
                 if r.get("service") == "edge" and r.get("phase", r.get("event")) == "begin"
                 and r.get("step") in ("Start", "Stop")]
        assert steps[-2:] == [("Stop", "a", "stop-first: network: host, two slots cannot share "
                               "the host's ports"), ("Start", "b", None)], steps


def published_ports(pool, name: str):
    rc, out, err = run(pool, name, ["nft", "-j", "list", "map", "ip", "orch", "tcp_ports"])
    assert rc == 0, err
    return [e[0] for item in json.loads(out)["nftables"] if "map" in item
            for e in item["map"].get("elem", [])]


def edge_netns_is_the_hosts(pool, name: str) -> bool:
    """Whether the one edge container runs in the host's network namespace (once the old
    slot, stopped after its drain on the host, is gone)."""
    deadline = time.monotonic() + 20
    while True:
        rc, out, err = run(pool, name, RUNTIME + ["list", "-f", "json"])
        running = [c for c in json.loads(out) if "-edge-" in c["id"] and c["status"] == "running"]
        if len(running) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(running) == 1, running
    _, mine, _ = run(pool, name, ["readlink", "/proc/self/ns/net"])
    _, theirs, _ = run(pool, name, ["readlink", f"/proc/{running[0]['pid']}/ns/net"])
    return mine == theirs


def test_a_service_moves_from_the_host_network_to_the_bridge_and_back(project):
    """host -> bridged is blue/green (the new slot's DNAT takes the port from the old process;
    no request from outside fails); bridged -> host is stop-first and leaves no DNAT behind
    for the port (the host's own process answers)."""
    edge = project / "edge.yaml"
    as_host = edge.read_text()
    assert "  network: host\n" in as_host
    edge.write_text(as_host.replace("  network: host\n", ""))
    prep0 = prepare(str(project), {})
    host = prep0.hosts[0]
    address, name = host.target.address, host.name
    with ConnectionPool([host.target]) as pool:
        with ik.Hammer(address, EDGE_PORT) as loop:
            time.sleep(0.5)
            prep, text, report = plan_and_apply(project)
            time.sleep(0.5)
        assert report.ok, [o.error for o in report.rollout.outcomes]
        assert "~ edge:" in text and "stop-first" not in text, text
        assert loop.failed == [] and loop.ok > 10, (loop.ok, loop.failed[:3])
        assert sorted(published_ports(pool, name)) == [EDGE_PORT, WEB_PORT]
        assert not edge_netns_is_the_hosts(pool, name)
        assert get(address, EDGE_PORT) == b"edge v2\n"

        edge.write_text(as_host)
        with ik.Hammer(address, EDGE_PORT) as loop:
            time.sleep(0.5)
            prep, text, report = plan_and_apply(project)
            time.sleep(0.5)
        assert report.ok, [o.error for o in report.rollout.outcomes]
        assert "stop-first: network: host" in text, text
        assert loop.ok > 10, (loop.ok, loop.failed[:3])      # a short gap: one slot at a time
        assert published_ports(pool, name) == [WEB_PORT]     # no DNAT left for the edge port
        assert edge_netns_is_the_hosts(pool, name)
        assert get(address, EDGE_PORT) == b"edge v2\n"
