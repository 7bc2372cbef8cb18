"""Booted hosts recover by themselves: the agent is the systemd unit orch installs, and after a
power cut and boot every service serves again, one slot each, with no orch command run."""
import threading
import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from orchestrator.agent.client import agent_path
from orchestrator.agent.install import install_agent_and_serve
from orchestrator.lab import faults
from orchestrator.lab.machine import LabMachine
from tests.conftest import own_lab
from tests.runtime import imagekit as ik

RECOVERY_LIMIT = 60.0       # seconds from `lab boot` to every service serving again
PORTS = {"web": 8080, "api": 8081}


@pytest.fixture(scope="module")
def recovery_lab():
    with own_lab("recov", amd64=0, arm64=0, booted=1, bullseye=1) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def agents(recovery_lab, tmp_path_factory):
    """The agent installed on each host the way apply installs it (install_agent_and_serve: file + unit)."""
    pyz, digest = build_agent_pyz(tmp_path_factory.mktemp("agent"))
    out = {}
    for h in recovery_lab.hosts:
        install_agent_and_serve(recovery_lab.pool.get(h.name), str(pyz), digest)
        out[h.name] = ik.Agent(lambda argv, input, timeout, h=h: recovery_lab.run(h, argv, input, timeout),
                               ["python3", agent_path(digest)])
    return out


@pytest.fixture(scope="module")
def images(static_busybox):
    base = ik.busybox_layer(str(static_busybox["linux/amd64"]))
    return {(svc, v): ik.make_image({"linux/amd64": [base, ik.tar_bytes([
        ik.dir_entry("www"), ik.file_entry("www/index.html", f"{svc} v{v}".encode())])]})
        for svc in PORTS for v in range(3)}


def spec(port, **over):
    return ik.deploy_spec(port=port, **dict(dict(monitor=0.3, drain=0.1), **over))


def sh(lab, name, line):
    rc, out, err = lab.run(lab.host(name), ["sh", "-c", line], timeout=60)
    assert rc == 0, (line, out, err)
    return out.decode().strip()


def deploy(agent, images, version, **over):
    for svc in PORTS:
        agent.ship(images[(svc, version)])
    rc, body = agent.apply({svc: (images[(svc, version)], spec(port, **over)) for svc, port in PORTS.items()})
    assert rc == 0 and all(s["ok"] for s in body["services"].values()), body


def serving(address):
    """{service: body} for every service that answers now (plain HTTP, no orch involved)."""
    out = {}
    for svc, port in PORTS.items():
        try:
            out[svc] = ik.hammer_get(address, port, timeout=0.5)
        except OSError:
            pass
    return out


def wait_serving(address, want, limit=RECOVERY_LIMIT):
    start = time.monotonic()
    while time.monotonic() - start < limit:
        now = serving(address)
        if all(now.get(svc) in bodies for svc, bodies in want.items()):
            return time.monotonic() - start, now
        time.sleep(0.1)
    raise AssertionError(f"not serving {want} after {limit}s: {serving(address)}")


def one_slot_each(agent):
    rc, st = agent.call("status")
    assert rc == 0, st
    for svc in PORTS:
        s = st["services"][svc]
        assert s["release"] == s["wanted"] and s["state"] == "running" and len(s["slots"]) == 1, s
    return st


def test_the_agent_is_an_enabled_unit_restarted_on_failure_and_containers_outlive_it(recovery_lab, agents, images):
    name = "booted-1"
    host = recovery_lab.host(name)
    deploy(agents[name], images, 0)
    assert sh(recovery_lab, name, "systemctl is-enabled orch-agent.service; systemctl is-active orch-agent.service; "
              "systemctl show -p StartLimitIntervalUSec --value orch-agent.service").split() == [
        "enabled", "active", "0"]                      # and it never gives up restarting
    before = sh(recovery_lab, name, "pgrep -f '^/bin/busybox httpd' | sort | tr '\\n' ' '")
    pid = sh(recovery_lab, name, "systemctl show -p MainPID --value orch-agent.service")
    with ik.Hammer(host.address, PORTS["web"]) as hammer:
        sh(recovery_lab, name, f"kill -9 {pid}")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            again = sh(recovery_lab, name, "systemctl show -p MainPID --value orch-agent.service")
            if again not in ("0", pid):
                break
            time.sleep(0.2)
        assert again not in ("0", pid)                     # Restart= brought it back
        sh(recovery_lab, name, "systemctl restart orch-agent.service")
        time.sleep(1)
    assert hammer.ok > 0 and not hammer.failed             # KillMode=process: the containers never stopped
    assert sh(recovery_lab, name, "pgrep -f '^/bin/busybox httpd' | sort | tr '\\n' ' '") == before


def test_power_cut_while_idle_every_service_comes_back_by_itself(recovery_lab, agents, images):
    machine = LabMachine(recovery_lab.layout)
    for h in recovery_lab.hosts:
        deploy(agents[h.name], images, 1)
        assert serving(h.address) == {svc: f"{svc} v1".encode() for svc in PORTS}
    for h in recovery_lab.hosts:
        faults.run_power_cut(machine, recovery_lab.layout.host(h.name))
    for h in recovery_lab.hosts:
        assert serving(h.address) == {}
        start = time.monotonic()
        faults.run_boot(machine, recovery_lab.layout.host(h.name))
        took, _ = wait_serving(h.address, {svc: [f"{svc} v1".encode()] for svc in PORTS})
        print(f"RECOVERY idle {h.name}: serving {time.monotonic() - start:.1f}s after lab boot")
        recovery_lab.pool.get(h.name).close()      # its session died with the host
        one_slot_each(agents[h.name])


def test_power_cut_in_the_middle_of_a_swap_ends_with_one_slot_each(recovery_lab, agents, images):
    name = "booted-1"
    lay_host, host = recovery_lab.layout.host(name), recovery_lab.host(name)
    machine = LabMachine(recovery_lab.layout)
    agent = agents[name]
    for svc in PORTS:
        agent.ship(images[(svc, 2)])
    result = {}

    def swap():   # a long monitor keeps both slots up while the cut comes
        try:
            result["apply"] = agent.apply({svc: (images[(svc, 2)], spec(port, monitor=5.0))
                                           for svc, port in PORTS.items()})
        except Exception as exc:  # noqa: BLE001 - the host dies under it
            result["error"] = exc

    t = threading.Thread(target=swap, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and b"v2" not in b"".join(serving(host.address).values()):
        time.sleep(0.05)
    assert b"v2" in b"".join(serving(host.address).values()), "the swap never started"
    faults.run_power_cut(machine, lay_host)
    t.join(60)
    assert "apply" not in result or result["apply"][0] != 0      # the swap did not finish
    start = time.monotonic()
    faults.run_boot(machine, lay_host)
    bodies = {svc: [f"{svc} v1".encode(), f"{svc} v2".encode()] for svc in PORTS}
    wait_serving(host.address, bodies)
    print(f"RECOVERY mid-swap {name}: serving {time.monotonic() - start:.1f}s after lab boot")
    recovery_lab.pool.get(name).close()            # its session died with the host
    deadline = time.monotonic() + RECOVERY_LIMIT
    while True:              # serving may come from the old slot first; the agent then settles
        try:
            st = one_slot_each(agent)
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    for svc in PORTS:
        release = st["services"][svc]["release"]
        assert serving(host.address)[svc] == (b"%s v2" % svc.encode() if release == st["services"][svc]["wanted"]
                                              else b"%s v1" % svc.encode())


def test_a_service_with_a_secret_comes_back_and_a_tmpfs_only_secret_does_not(recovery_lab, agents, static_busybox):
    """Secrets at rest (0600, root only, on the host's disk) bring a service back after a power
    cut with no control machine in reach; a secret marked tmpfs never touched the disk, so its
    service waits for the next apply."""
    import base64
    name = "booted-1"
    host = recovery_lab.host(name)
    agent = agents[name]
    base = ik.busybox_layer(str(static_busybox["linux/amd64"]))
    show = ["/bin/busybox", "sh", "-c", "mkdir -p /tmp/www && cp /run/secrets/pw /tmp/www/index.html && "
            "exec /bin/busybox httpd -f -p 80 -h /tmp/www"]
    img = ik.make_image({"linux/amd64": [base]}, cmd=show)
    agent.ship(img)
    rc, body = agent.call("unlock", req={"token": "", "force": True})   # the mid-swap cut left its lock
    assert rc == 0, body
    kept = spec(8090, secrets=[{"name": "pw", "dest": "/run/secrets/pw"}])
    memory = spec(8091, secrets=[{"name": "pw", "dest": "/run/secrets/pw", "tmpfs": True}])
    values = {svc: {"pw": base64.b64encode(f"{svc}-s3cret".encode()).decode()} for svc in ("kept", "memory")}
    rc, body = agent.apply({"kept": (img, kept), "memory": (img, memory)}, secrets=values)
    assert rc == 0, body
    assert ik.hammer_get(host.address, 8090) == b"kept-s3cret"
    assert ik.hammer_get(host.address, 8091) == b"memory-s3cret"
    assert sh(recovery_lab, name, "stat -c '%a %U' /var/lib/orch/state/secrets/kept.json") == "600 root"
    assert sh(recovery_lab, name, "ls /var/lib/orch/state/secrets") == "kept.json"      # never the tmpfs one
    assert sh(recovery_lab, name, "grep -rl memory-s3cret /var/lib/orch || true") == ""

    machine = LabMachine(recovery_lab.layout)
    faults.run_power_cut(machine, recovery_lab.layout.host(name))
    start = time.monotonic()
    faults.run_boot(machine, recovery_lab.layout.host(name))
    body = b""
    while time.monotonic() - start < RECOVERY_LIMIT:
        try:
            body = ik.hammer_get(host.address, 8090, timeout=0.5)
            if body == b"kept-s3cret":
                break
        except OSError:
            time.sleep(0.2)
    assert body == b"kept-s3cret"
    print(f"RECOVERY with a secret: serving {time.monotonic() - start:.1f}s after lab boot")
    with pytest.raises(OSError):
        ik.hammer_get(host.address, 8091, timeout=0.5)      # its secret went with the power
    recovery_lab.pool.get(name).close()
    for svc in ("kept", "memory"):
        rc, body = agent.call("remove", svc)          # imagekit takes the deploy lock for it
        assert rc == 0, body
    assert sh(recovery_lab, name, "ls /var/lib/orch/state/secrets") == ""       # removed with it
