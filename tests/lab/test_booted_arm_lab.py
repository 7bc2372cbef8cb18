"""A booted arm64 lab host: systemd as PID 1 from a bookworm arm64 root made once with mmdebstrap
(every binary of it, systemd included, runs under qemu-user through the lab's binfmt entries).
The agent is the systemd unit orch installs, a blue/green swap loses no request, and after a power
cut and boot the service serves again with no orch command run.

One arm64 host runs here; armv7 boots the same way (`orch lab up --booted-armv7 1`) and is
measured in bench/boot.py, to keep the suite's time (each boot is ~10 s of emulated systemd)."""
import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from orchestrator.agent.client import agent_path
from orchestrator.agent.install import install_agent_and_serve
from orchestrator.lab import faults
from orchestrator.lab.machine import LabMachine
from tests.conftest import own_lab
from tests.runtime import imagekit as ik

PLATFORM = "linux/arm64"
NAME = "booted-arm64-1"
PORT = 8080
RECOVERY_LIMIT = 180.0      # from `lab boot` to serving again, under emulation on a busy machine


@pytest.fixture(scope="module")
def arm_lab():
    with own_lab("barm", amd64=0, arm64=0, booted_arm64=1) as the_lab:
        yield the_lab


@pytest.fixture(scope="module")
def agent(arm_lab, tmp_path_factory):
    pyz, digest = build_agent_pyz(tmp_path_factory.mktemp("agent"))
    install_agent_and_serve(arm_lab.pool.get(NAME), str(pyz), digest)
    return ik.Agent(lambda argv, input, timeout: arm_lab.run(arm_lab.host(NAME), argv, input, timeout),
                    ["python3", agent_path(digest)])


@pytest.fixture(scope="module")
def images(static_busybox):
    base = ik.busybox_layer(str(static_busybox[PLATFORM]))
    return [ik.make_image({PLATFORM: [base, ik.tar_bytes([
        ik.dir_entry("www"), ik.file_entry("www/index.html", f"arm v{v}".encode())])]}) for v in range(2)]


def sh(lab, line, timeout=120):
    rc, out, err = lab.run(lab.host(NAME), ["sh", "-c", line], timeout=timeout)
    assert rc == 0, (line, out, err)
    return out.decode().strip()


def deploy(agent, image, **over):
    agent.ship(image)
    spec = ik.deploy_spec(port=PORT, **dict(dict(monitor=0.5, drain=0.5), **over))
    rc, body = agent.apply({"web": (image, spec)})
    assert rc == 0 and body["services"]["web"]["ok"], body


def one_slot(agent):
    rc, st = agent.call("status")
    assert rc == 0, st
    s = st["services"]["web"]
    assert s["release"] == s["wanted"] and s["state"] == "running" and len(s["slots"]) == 1, s


def test_the_arm64_host_boots_systemd_and_runs_the_agent_as_its_unit(arm_lab, agent):
    assert sh(arm_lab, "cat /proc/1/comm; uname -m; cat /etc/orch/platform").split() == [
        "systemd", "aarch64", PLATFORM]
    assert sh(arm_lab, "timeout 120 systemctl is-system-running --wait || systemctl --failed --no-legend",
              timeout=150) == "running"
    assert sh(arm_lab, "systemctl is-enabled orch-agent.service; systemctl is-active orch-agent.service").split() \
        == ["enabled", "active"]


def test_a_blue_green_swap_on_the_arm64_host_loses_no_request(arm_lab, agent, images):
    host = arm_lab.host(NAME)
    deploy(agent, images[0])
    assert ik.hammer_get(host.address, PORT) == b"arm v0"
    with ik.Hammer(host.address, PORT) as hammer:
        deploy(agent, images[1])
        time.sleep(0.5)
    assert hammer.ok > 0 and not hammer.failed, hammer.failed[:3]
    assert set(hammer.bodies) <= {b"arm v0", b"arm v1"} and b"arm v1" in hammer.bodies
    one_slot(agent)


def test_after_a_power_cut_and_boot_it_serves_again_by_itself(arm_lab, agent, images):
    host, lay_host = arm_lab.host(NAME), arm_lab.layout.host(NAME)
    assert ik.hammer_get(host.address, PORT) == b"arm v1"
    machine = LabMachine(arm_lab.layout)
    faults.run_power_cut(machine, lay_host)
    with pytest.raises(OSError):
        ik.hammer_get(host.address, PORT, timeout=0.5)
    start = time.monotonic()
    booted = faults.run_boot(machine, lay_host)
    body = b""
    while time.monotonic() - start < RECOVERY_LIMIT:
        try:
            body = ik.hammer_get(host.address, PORT, timeout=0.5)
            break
        except OSError:
            time.sleep(0.2)
    print(f"RECOVERY arm64: sshd {booted:.1f}s, serving {time.monotonic() - start:.1f}s after lab boot")
    assert body == b"arm v1"
    arm_lab.pool.get(NAME).close()              # its session died with the host
    one_slot(agent)


def test_the_seccomp_filter_holds_for_a_container_on_the_arm64_host(arm_lab, agent, static_busybox):
    """The agent is an aarch64 program here (qemu-user says so in uname), but the kernel that applies
    the filter is the machine's x86_64 one: a filter for the wrong architecture would let every
    call through. The filter is on and refuses a user namespace, as on every other lab host."""
    from tests.runtime.test_isolation_lab import PROBES, logs, serve
    host = arm_lab.host(NAME)
    img = ik.make_image({PLATFORM: [ik.busybox_layer(str(static_busybox[PLATFORM]), b"filtered\n")]},
                        cmd=serve(PROBES))
    agent.ship(img)
    spec = ik.deploy_spec(port=8180)
    spec["health"] = dict(spec["health"], interval=1.0, retries=30)
    rc, body = agent.apply({"probe": (img, spec)})
    assert rc == 0 and body["services"]["probe"]["ok"], body
    assert ik.hammer_get(host.address, 8180) == b"filtered\n"
    out = logs(agent, "probe")
    assert "Seccomp:\t2" in out, out
    assert "userns=refused" in out and "netns=refused" in out, out
