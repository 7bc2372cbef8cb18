"""The agent on real lab hosts (sshd, runc, nftables, qemu-user): what issue 4 must show."""
from __future__ import annotations

import json
import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from runtime import protocol
from tests.runtime import imagekit as ik

pytestmark = pytest.mark.lab

REMOTE = ik.TEST_AGENT


@pytest.fixture(scope="module")
def lab():
    """A lab of our own (shadows the shared session lab): these tests start and kill -9 the
    agent's serve loop and publish ports, which must not meet other tests' deployments."""
    from tests.conftest import own_lab
    with own_lab("rt", amd64=2, arm64=1, armv7=1) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def pyz(tmp_path_factory):
    path, _ = build_agent_pyz(tmp_path_factory.mktemp("agent"))
    return path


make_agent = ik.lab_agent


@pytest.fixture(scope="module")
def amd(lab, pyz):
    host = lab.by_platform("linux/amd64")[0]
    return host, make_agent(lab, host, pyz)


@pytest.fixture(scope="module")
def amd2(lab, pyz):
    host = lab.by_platform("linux/amd64")[1]
    return host, make_agent(lab, host, pyz)


@pytest.fixture(scope="module")
def base_layer(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]), page=b"base\n")


def page_layer(text: str) -> bytes:
    return ik.tar_bytes([ik.dir_entry("www"), ik.file_entry("www/index.html",
                                                            text.encode() + b"\n")])


def image(base: bytes, page: str, cmd=ik.HTTPD_CMD) -> ik.Image:
    return ik.make_image({"linux/amd64": [base, page_layer(page)]}, cmd=cmd)


def status(agent) -> dict:
    rc, body = agent.call("status")
    assert rc == 0, body
    return body["services"]


def one_slot(agent, service, timeout=10.0):
    """The service's status once its old slot is gone (apply answers before that slot's
    drain and stop, which follow within the drain plus a moment)."""
    wait_for(lambda: len(status(agent)[service]["slots"]) == 1, timeout, 0.05)
    return status(agent)[service]


def wait_for(fn, timeout=30.0, every=0.1):
    end = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > end:
            raise AssertionError("condition not reached in time")
        time.sleep(every)


def leaks(lab, host) -> dict:
    """What is on the host: runtime containers, overlay mounts, map elements, veths, dirs."""
    code = (
        "import json, os, subprocess\n"
        "r = subprocess.run(['crun', '--root', '/run/orch/crun', 'list', '-q'], "
        "capture_output=True, text=True).stdout.split()\n"
        "m = [l.split()[4] for l in open('/proc/self/mountinfo') "
        "if '/var/lib/orch/containers/' in l.split()[4]]\n"
        "nft = json.loads(subprocess.run(['nft', '-j', 'list', 'table', 'ip', 'orch'], "
        "capture_output=True, text=True).stdout or '{\"nftables\": []}')\n"
        "el = [e for i in nft['nftables'] if 'map' in i and i['map']['name'].endswith('_ports') "
        "for e in i['map'].get('elem', [])]\n"
        "v = subprocess.run(['ip', '-o', 'link', 'show', 'type', 'veth'], capture_output=True, "
        "text=True).stdout\n"
        "veth = [l.split(':')[1].strip().split('@')[0] for l in v.splitlines() "
        "if ': ov' in l]\n"
        "d = sorted(os.listdir('/var/lib/orch/containers'))\n"
        "hid = open('/var/lib/orch/state/host-id').read().strip()\n"
        "cg = [x for x in os.listdir('/sys/fs/cgroup/memory/orch') if x.startswith('o' + hid)]\n"
        "print(json.dumps({'containers': sorted(r), 'mounts': m, 'map': el, 'veth': veth, 'dirs': d, "
        "'cgroups': cg}))\n")
    rc, out, err = lab.run(host, ["python3", "-c", code])
    assert rc == 0, err
    return json.loads(out)


def test_info_reports_platform_runtime_and_digest(amd, lab, pyz):
    host, agent = amd
    rc, info = agent.call("info")
    assert rc == 0, info
    assert info["platform"] == "linux/amd64"
    # a plain lab host is a cgroup v1 host (orchestrator.lab.hostinit): crun, as on a Pi
    assert info["runtime"] == "crun"
    assert info["agent_digest"].startswith("sha256:") and info["nft"] is True


def test_twenty_replacements_under_load_fail_no_request(amd, base_layer):
    host, agent = amd
    spec = ik.deploy_spec(port=8080, drain=0.3)
    images = [image(base_layer, f"v{i}") for i in range(21)]
    for img in images:
        agent.ship(img)
    rc, body = agent.apply({"web": (images[0], spec)})
    assert rc == 0 and body["services"]["web"]["ok"], body
    assert ik.hammer_get(host.address, 8080) == b"v0\n"
    times = []
    with ik.Hammer(host.address, 8080) as h:
        time.sleep(0.3)
        for img in images[1:]:
            t = time.monotonic()
            rc, body = agent.apply({"web": (img, spec)})
            times.append(time.monotonic() - t)
            assert rc == 0 and body["services"]["web"]["ok"], body
        time.sleep(0.3)
    assert h.failed == [], h.failed[:5]
    assert h.ok > 100
    assert len([b for b in h.bodies if b.startswith(b"v")]) >= 10, h.bodies
    assert ik.hammer_get(host.address, 8080) == b"v20\n"
    st = one_slot(agent, "web")          # the old slot stops after the answer, in the background
    assert st["release"] == protocol.release_id(images[20].index, spec)
    assert list(st["slots"]) == [st["slot"]]
    assert len(st["previous"]) == 2                      # keep_releases 3: serving + 2
    print(f"apply (incl. ssh + drain 0.3 s): median {sorted(times)[10]:.3f} s, "
          f"{h.ok} requests, 0 failed")


def test_every_apply_collects_down_to_keep_releases_and_rollback_still_works(amd):
    host, agent = amd                                 # after 20 replacements of "web"
    rc, out, err = agent.runner(["ls", "/var/lib/orch/images"], b"", 30)
    before = out.split()
    assert len(before) == 3        # every apply collected: keep_releases (3) counts the serving one
    rc, body = agent.call("gc")
    assert rc == 0 and body["removed_images"] == [], body
    assert ik.hammer_get(host.address, 8080) == b"v20\n"
    rc, body = agent.call("rollback", "web")              # the history is still there
    assert rc == 0 and ik.hammer_get(host.address, 8080) == b"v19\n"


def test_failing_health_leaves_the_old_release_serving(amd, base_layer):
    host, agent = amd
    good = image(base_layer, "good")
    bad = image(base_layer, "bad")
    for img in (good, bad):
        agent.ship(img)
    spec = ik.deploy_spec(port=8081)
    rc, body = agent.apply({"hc": (good, spec)})
    assert rc == 0, body
    bad_spec = ik.deploy_spec(port=8081)
    bad_spec["health"] = dict(bad_spec["health"], path="/missing", interval=0.3, retries=2)
    with ik.Hammer(host.address, 8081) as h:
        rc, body = agent.apply({"hc": (bad, bad_spec)})
    assert rc == protocol.EXIT_PARTIAL
    res = body["services"]["hc"]
    assert res["ok"] is False and "HTTP 404" in res["error"]
    assert res["release"] == protocol.release_id(good.index, spec)
    assert h.failed == [] and set(h.bodies) == {b"good\n"}
    st = one_slot(agent, "hc")
    assert list(st["slots"]) == [st["slot"]] and "HTTP 404" in st["error"]


def test_no_room_fails_clearly_and_port_clash_is_refused(amd, base_layer):
    host, agent = amd                                   # after the test above: "hc" serves
    img = image(base_layer, "huge")
    agent.ship(img)
    spec = ik.deploy_spec(port=8081, resources={"memory": 1 << 50, "pids": 64, "cpus": None})
    rc, body = agent.apply({"hc": (img, spec)})
    res = body["services"]["hc"]
    assert rc == protocol.EXIT_PARTIAL and "not enough free disk or memory" in res["error"]
    assert ik.hammer_get(host.address, 8081) == b"good\n"
    rc, body = agent.apply({"dup": (img, ik.deploy_spec(port=8081))})
    assert rc == protocol.EXIT_USAGE and "already published by service hc" in \
        body["error"]["message"]
    rc, body = agent.apply({"dup": (img, ik.deploy_spec(port=22))})      # sshd listens there
    assert rc == protocol.EXIT_USAGE and "in use by a process on the host" in \
        body["error"]["message"]
    # the spec allows stop-first: the old slot goes first, then the new one starts
    spec_sf = dict(spec, stop_first=True)
    rc, body = agent.apply({"hc": (img, spec_sf)})
    assert rc == 0 and body["services"]["hc"]["ok"], body
    assert ik.hammer_get(host.address, 8081) == b"huge\n"
    st = one_slot(agent, "hc")
    assert list(st["slots"]) == [st["slot"]]


def test_monitor_window_reverts_a_release_that_dies(amd, base_layer):
    host, agent = amd
    good = image(base_layer, "stable")
    dying = image(base_layer, "dying", cmd=["/bin/busybox", "sh", "-c",
                                            "/bin/busybox httpd -f -p 80 -h /www & "
                                            "sleep 1; exit 3"])
    for img in (good, dying):
        agent.ship(img)
    rc, body = agent.apply({"mon": (good, ik.deploy_spec(port=8082))})
    assert rc == 0, body
    spec = ik.deploy_spec(port=8082, monitor=4.0, drain=0.2)
    t = time.monotonic()
    rc, body = agent.apply({"mon": (dying, spec)})
    assert time.monotonic() - t < 4.0                    # reverted at the death, not at the end
    res = body["services"]["mon"]
    assert rc == protocol.EXIT_PARTIAL and not res["ok"] and "reverted" in res["error"]
    assert ik.hammer_get(host.address, 8082) == b"stable\n"
    st = one_slot(agent, "mon")
    assert list(st["slots"]) == [st["slot"]]
    assert st["release"] not in st["previous"]


def test_kill9_mid_swap_converges_to_one_slot_and_leaks_nothing(lab, amd2, base_layer):
    host, agent = amd2
    slow = ["/bin/busybox", "sh", "-c",
            "trap 'exit 0' TERM; sleep 1.5; /bin/busybox httpd -f -p 80 -h /www & wait"]
    v1, v2, v3 = image(base_layer, "k1"), image(base_layer, "k2", cmd=slow), \
        image(base_layer, "k3")
    for img in (v1, v2, v3):
        agent.ship(img)
    rc, started = agent.call("serve", "--daemon")
    assert rc == 0 and started["started"], started
    lenient = {"kind": "http", "path": "/", "port": 80, "command": [], "interval": 0.5,
               "timeout": 0.5, "retries": 10, "start_period": 0.0}     # CI machines are slow
    spec = ik.deploy_spec(port=8080, drain=0.2, health=lenient)
    rc, body = agent.apply({"k": (v1, spec)})
    assert rc == 0, body
    adopted = status(agent)["k"]

    # 1) kill -9 serve while the new slot is being health-checked
    rc, body = agent.apply({"k": (v2, spec)}, wait=False)
    assert rc == 0, body
    wait_for(lambda: len(status(agent)["k"]["slots"]) == 2, 10, 0.05)
    assert lab.run(host, ["kill", "-9", str(started["pid"])])[0] == 0
    time.sleep(0.5)
    assert len(status(agent)["k"]["slots"]) == 2          # mid-swap: both slots are there
    rc, started = agent.call("serve", "--daemon")
    assert rc == 0 and started["started"], started
    want = protocol.release_id(v2.index, spec)
    try:
        wait_for(lambda: (lambda s: s["release"] == want and len(s["slots"]) == 1)(
            status(agent)["k"]), 20)
    except AssertionError:
        print(json.dumps(status(agent), indent=1))
        print(lab.run(host, ["tail", "-30", "/var/lib/orch/logs/agent.log"])[1].decode())
        print(lab.run(host, ["tail", "-30", "/var/lib/orch/state/journal.log"])[1].decode())
        raise
    assert ik.hammer_get(host.address, 8080) == b"k2\n"

    # 2) kill -9 during the monitor window (after the switch, old slot still draining)
    spec_mon = ik.deploy_spec(port=8080, drain=0.2, monitor=3.0, health=lenient)
    rc, body = agent.apply({"k": (v3, spec_mon)}, wait=False)
    want3 = protocol.release_id(v3.index, spec_mon)
    wait_for(lambda: status(agent)["k"]["release"] == want3, 10, 0.05)
    assert len(status(agent)["k"]["slots"]) == 2
    assert lab.run(host, ["kill", "-9", str(started["pid"])])[0] == 0
    rc, started = agent.call("serve", "--daemon")
    assert rc == 0 and started["started"], started
    wait_for(lambda: len(status(agent)["k"]["slots"]) == 1, 20)
    st = status(agent)["k"]
    assert st["release"] == want3 and st["state"] == "running"
    assert ik.hammer_get(host.address, 8080) == b"k3\n"
    found = leaks(lab, host)
    ip = st["slots"][st["slot"]]["ip"]
    assert len(found["containers"]) == 1 and len(found["mounts"]) == 1 and len(found["dirs"]) == 1
    assert len(found["veth"]) == 1 and len(found["cgroups"]) == 1
    assert len(found["map"]) == 1 and json.dumps(found["map"]).count(ip) == 1, found
    assert adopted["slot"] != st["slot"] or adopted["release"] != st["release"]

    # 3) a crashed container is restarted by serve (and a restarted serve re-adopts it)
    before = leaks(lab, host)["containers"]
    rc, out, err = lab.run(host, ["crun", "--root", "/run/orch/crun", "kill", before[0], "KILL"])
    assert rc == 0, err
    wait_for(lambda: status(agent)["k"]["state"] == "running"
             and _answers(host.address, 8080), 15, 0.2)
    assert ik.hammer_get(host.address, 8080) == b"k3\n"

    # 4) kill -9 of serve in a steady state: the new serve adopts the running container as is
    before = status(agent)["k"]
    assert lab.run(host, ["kill", "-9", str(started["pid"])])[0] == 0
    rc, started = agent.call("serve", "--daemon")
    assert rc == 0 and started["started"], started
    time.sleep(2.0)
    after = status(agent)["k"]
    # same slot, same address (a restarted container would get a fresh one), same since
    assert after["slots"] == before["slots"] and after["since"] == before["since"]
    assert after["state"] == "running"
    lab.run(host, ["kill", str(started["pid"])])


def _answers(address, port) -> bool:
    try:
        ik.hammer_get(address, port)
        return True
    except OSError:
        return False


def test_corrupted_and_truncated_blobs_are_refused(amd2):
    host, agent = amd2
    data = b"some layer bytes" * 1000
    d = ik.digest(data)
    bad = data[:-1] + b"X"
    rc, body = agent.call("receive", data=json.dumps({"digest": d, "size": len(bad),
                                                      "offset": 0}).encode() + b"\n" + bad)
    assert rc != 0 and body["error"]["code"] == protocol.E_DIGEST
    rc, body = agent.call("receive", data=json.dumps({"digest": d, "size": len(data),
                                                      "offset": 0}).encode() + b"\n" + data[:5000])
    assert rc == 0 and body["partial"] == {d: 5000} and body["stored"] == []
    rc, have = agent.call("have", req={"digests": [d]})
    assert have == {"present": [], "partial": {d: 5000}}
    rc, body = agent.call("receive", data=protocol.frame_header(d, len(data), 5000)
                          + data[5000:])
    assert rc == 0 and body["stored"] == [d]
    # an apply naming blobs the host does not have is refused before anything changes
    img = ik.make_image({"linux/amd64": [page_layer("never shipped")]})
    rc, body = agent.apply({"ghost": (img, ik.deploy_spec(port=8090))})
    assert rc != 0 and body["error"]["code"] in (protocol.E_MISSING_BLOB, protocol.E_DIGEST)


@pytest.mark.parametrize("entry,words", [
    (ik.file_entry("../../etc/evil", b"x"), "escapes the root"),
    (ik.link_entry("www/up", "../../../../etc"), "symlink escapes"),
    (ik.link_entry("www/hard", "/etc/shadow", hard=True), "hardlink escapes"),
])
def test_path_escaping_tars_are_refused(amd2, base_layer, entry, words):
    host, agent = amd2
    img = ik.make_image({"linux/amd64": [base_layer, ik.tar_bytes([entry])]})
    agent.ship(img)
    rc, body = agent.apply({"evil": (img, ik.deploy_spec(port=8091))})
    res = body["services"]["evil"]
    assert rc == protocol.EXIT_PARTIAL and not res["ok"]
    assert words in res["error"] and res["release"] is None


def test_device_node_is_refused(amd2, base_layer):
    import tarfile
    host, agent = amd2
    ti = tarfile.TarInfo("dev/mem")
    ti.type = tarfile.CHRTYPE
    ti.devmajor, ti.devminor = 1, 1
    img = ik.make_image({"linux/amd64": [base_layer, ik.tar_bytes([(ti, None)])]})
    agent.ship(img)
    rc, body = agent.apply({"devnode": (img, ik.deploy_spec(port=8092))})
    assert rc == protocol.EXIT_PARTIAL and "device node" in body["services"]["devnode"]["error"]


@pytest.mark.parametrize("platform,arch", [("linux/arm64", b"aarch64"),
                                           ("linux/arm/v7", b"armv7l")])
def test_arm_image_runs_on_an_arm_host(lab, pyz, static_busybox, platform, arch):
    host = lab.by_platform(platform)[0]
    agent = make_agent(lab, host, pyz)
    rc, info = agent.call("info")
    assert info["platform"] == platform
    img = ik.make_image({
        p: [ik.busybox_layer(str(static_busybox[p]), p.encode() + b"\n")]
        for p in ("linux/amd64", platform)},
        cmd=["/bin/busybox", "sh", "-c", "/bin/busybox uname -m; "
             "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"])
    agent.ship(img)
    spec = ik.deploy_spec(port=8080)
    spec["health"] = dict(spec["health"], interval=1.0, retries=10)
    rc, body = agent.apply({"pi": (img, spec)})
    assert rc == 0 and body["services"]["pi"]["ok"], body
    assert ik.hammer_get(host.address, 8080) == platform.encode() + b"\n"
    rc, out, err = agent.runner(agent.argv("logs", "pi"), b"", 30)
    assert rc == 0 and arch in out                     # the emulated kernel arch, via qemu


def test_rollback_and_remove(amd, base_layer):
    host, agent = amd
    v1, v2 = image(base_layer, "r1"), image(base_layer, "r2")
    for img in (v1, v2):
        agent.ship(img)
    spec = ik.deploy_spec(port=8085)
    assert agent.apply({"rb": (v1, spec)})[0] == 0
    assert agent.apply({"rb": (v2, spec)})[0] == 0
    assert ik.hammer_get(host.address, 8085) == b"r2\n"
    with ik.Hammer(host.address, 8085) as h:
        rc, body = agent.call("rollback", "rb")
    assert rc == 0 and body["services"]["rb"]["release"] == protocol.release_id(v1.index, spec)
    assert h.failed == []
    assert ik.hammer_get(host.address, 8085) == b"r1\n"
    rc, body = agent.call("rollback", "rb", "--to", "r-0000000000000000")
    assert rc != 0 and body["error"]["code"] == protocol.E_NOT_FOUND
    rc, body = agent.call("remove", "rb")
    assert rc == 0
    assert "rb" not in status(agent)
    assert not _answers(host.address, 8085)


def test_secrets_volumes_logs_audit_lock(amd2, base_layer):
    host, agent = amd2
    cmd = ["/bin/busybox", "sh", "-c",
           "cp /run/secrets/pw /data/index.html; echo started-ok; "
           "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /data & wait"]
    img = image(base_layer, "s", cmd=cmd)
    agent.ship(img)
    spec = ik.deploy_spec(port=8093, volumes=[{"name": "data", "dest": "/data",
                                               "readonly": False}],
                          secrets=[{"name": "pw", "dest": "/run/secrets/pw"}])
    import base64
    rc, body = agent.apply({"sec": (img, spec)}, who="alice",
                           secrets={"sec": {"pw": base64.b64encode(b"s3cret-value").decode()}})
    assert rc == 0, body
    assert ik.hammer_get(host.address, 8093) == b"s3cret-value"
    rc, out, err = agent.runner(agent.argv("logs", "sec", "--tail", "5"), b"", 30)
    assert rc == 0 and b"started-ok" in out
    rc, audit = agent.call("audit")
    assert any(a["who"] == "alice" and a["service"] == "sec" for a in audit["lines"])
    assert "s3cret" not in json.dumps(audit) and "s3cret" not in json.dumps(status(agent))
    # on disk nowhere (the volume is where this test's own container copied it)
    rc, out, err = agent.runner(["grep", "-rl", "--exclude-dir=volumes", "s3cret-value",
                                 "/var/lib/orch"], b"", 30)
    assert rc == 1 and out == b"", out
    rc, body = agent.call("lock", req={"holder": "alice", "ttl": 60})
    assert rc == 0
    rc, body = agent.call("lock", req={"holder": "bob", "ttl": 60})
    assert rc == protocol.EXIT_LOCKED and body["error"]["code"] == protocol.E_LOCKED
    assert body["error"]["holder"] == "alice"
    rc, body = agent.call("unlock", req={"holder": "alice"})
    assert rc == 0
    rc, body = agent.call("gc")
    assert rc == 0 and "freed" in body


def test_outbound_nat_tcp_and_exec_health_and_a_portless_service(lab, amd, amd2, base_layer):
    """A container on one host fetches from a service on another (outbound NAT); tcp and exec
    health checks; a service without ports is replaced start-first."""
    (h1, a1), (h2, a2) = amd, amd2
    origin = image(base_layer, "from-origin")
    a2.ship(origin)
    tcp = {"kind": "tcp", "path": "/", "port": 80, "command": [], "interval": 0.5,
           "timeout": 0.5, "retries": 6, "start_period": 0.0}
    rc, body = a2.apply({"origin": (origin, ik.deploy_spec(port=8094, health=tcp))})
    assert rc == 0, body
    fetch = ["/bin/busybox", "sh", "-c",
             f"mkdir -p /tmp/www; until /bin/busybox wget -q -O /tmp/www/index.html "
             f"http://{h2.address}:8094/; do sleep 0.1; done; "
             "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /tmp/www & wait"]
    client = image(base_layer, "client", cmd=fetch)
    a1.ship(client)
    exe = {"kind": "exec", "path": "/", "port": 0, "interval": 0.5, "timeout": 2.0,
           "retries": 10, "start_period": 0.0,
           "command": ["/bin/busybox", "test", "-s", "/tmp/www/index.html"]}
    rc, body = a1.apply({"client": (client, ik.deploy_spec(port=8095, health=exe))})
    assert rc == 0 and body["services"]["client"]["ok"], body
    assert ik.hammer_get(h1.address, 8095) == b"from-origin\n"

    loop = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
    w1, w2 = image(base_layer, "w1", cmd=loop), image(base_layer, "w2", cmd=loop)
    for img in (w1, w2):
        a1.ship(img)
    none = {"kind": "none", "path": "/", "port": 0, "command": [], "interval": 1.0,
            "timeout": 1.0, "retries": 3, "start_period": 0.0}
    for img in (w1, w2):
        rc, body = a1.apply({"worker": (img, ik.deploy_spec(port=0, ports=[], health=none))})
        assert rc == 0 and body["services"]["worker"]["ok"], body
    st = one_slot(a1, "worker")
    assert st["state"] == "running" and list(st["slots"]) == [st["slot"]] == ["b"]


def test_serve_reports_the_health_of_serving_containers(lab, amd2, base_layer):
    host, agent = amd2
    cmd = ["/bin/busybox", "sh", "-c", "mkdir -p /tmp/www; echo up > /tmp/www/ok.html; "
           "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /tmp/www & wait"]
    img = image(base_layer, "hp", cmd=cmd)
    agent.ship(img)
    spec = ik.deploy_spec(port=8096, health={"kind": "http", "path": "/ok.html", "port": 80,
                                             "command": [], "interval": 0.2, "timeout": 0.5,
                                             "retries": 2, "start_period": 0.0})
    rc, body = agent.apply({"hp": (img, spec)})
    assert rc == 0, body
    rc, started = agent.call("serve", "--daemon")
    assert rc == 0, started
    try:
        wait_for(lambda: status(agent)["hp"]["health"] == "healthy", 10)
        cid = [c for c in leaks(lab, host)["containers"] if c.endswith("-hp-a")][0]
        rc, out, err = lab.run(host, ["crun", "--root", "/run/orch/crun", "exec", cid,
                                      "/bin/busybox", "rm", "/tmp/www/ok.html"])
        assert rc == 0, err
        wait_for(lambda: status(agent)["hp"]["health"] == "unhealthy", 10)
        assert status(agent)["hp"]["state"] == "running"      # reported, not replaced
    finally:
        lab.run(host, ["kill", str(started["pid"])])


def test_remove_honours_the_services_stop_timeout(amd2, base_layer):
    """A service that ignores SIGTERM is killed after its own stop_timeout, not the default 10 s."""
    host, agent = amd2
    stubborn = ["/bin/busybox", "sh", "-c",
                "trap '' TERM; /bin/busybox httpd -p 80 -h /www; while true; do sleep 0.2; done"]
    img = image(base_layer, "stubborn", cmd=stubborn)
    agent.ship(img)
    rc, body = agent.apply({"stub": (img, ik.deploy_spec(port=8097, stop_timeout=1.0, init=False))})
    assert rc == 0, body
    t = time.monotonic()
    rc, body = agent.call("remove", "stub")
    took = time.monotonic() - t
    assert rc == 0, body
    assert took < 6.0, f"remove took {took:.1f} s with stop_timeout 1 s"
    assert "stub" not in status(agent)


def test_a_container_on_a_recently_used_address_is_reachable_at_once(amd, base_layer):
    """A new container may get the address of one stopped moments ago (the allocation cursor
    is lost with status.json, and wraps on a busy host): the host's neighbour entry still
    names the old veth's MAC, so without a fix its health checks time out for seconds while
    the container answers nothing (found in the apply lab tests after "lost state files")."""
    host, agent = amd
    imgs = [image(base_layer, f"reuse{i}") for i in range(3)]
    for img in imgs:
        agent.ship(img)
    spec = ik.deploy_spec(port=8098)            # 3 checks 0.5 s apart, 0.5 s timeout each

    def serving_ip() -> str:
        slots = status(agent)["reuse"]["slots"]       # the old slot may still be listed, stopping
        running = [s["ip"] for s in slots.values() if s["state"] == "running"]
        assert len(running) == 1, slots
        return running[0]

    rc, body = agent.apply({"reuse": (imgs[0], spec)})
    assert rc == 0 and body["services"]["reuse"]["ok"], body
    first = serving_ip()
    assert ik.hammer_get(host.address, 8098) == b"reuse0\n"     # the host now knows its MAC
    rc, body = agent.apply({"reuse": (imgs[1], spec)})
    assert rc == 0 and body["services"]["reuse"]["ok"], body
    assert serving_ip() != first
    # the next container gets the first one's address, as after a lost cursor
    n = int(first.rsplit(".", 1)[1]) + 256 * int(first.split(".")[2])
    rc, out, err = agent.runner(["python3", "-c", (
        "import json,sys; p='/var/lib/orch/state/status.json'; s=json.load(open(p)); "
        "s['ipam']=int(sys.argv[1]); json.dump(s, open(p, 'w'))"), str(n - 1)], b"", 30)
    assert rc == 0, err
    rc, body = agent.apply({"reuse": (imgs[2], spec)})
    assert rc == 0 and body["services"]["reuse"]["ok"], body
    assert serving_ip() == first
    assert ik.hammer_get(host.address, 8098) == b"reuse2\n"
