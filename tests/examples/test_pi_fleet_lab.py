"""examples/pi-fleet as shipped, on the lab its fleet.yaml declares: one arm64 and two armv7 hosts
behind 2 Mbit/s links. `orch apply` builds for both platforms (cached between runs in the test
cache's ORCH_HOME), ships each host its own platform's image over its slow link, and every host
serves the page from a container of its own architecture."""
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.fleet.inventory import lab_layout
from orchestrator.lab.machine import LabMachine
from orchestrator.manifest.loader import load_desired
from tests.conftest import REPO

UNAME = {"linux/arm64": "aarch64", "linux/arm/v7": "armv7l"}


def orch(argv, env, timeout=900):
    return subprocess.run([sys.executable, "-m", "orchestrator.cli"] + argv, env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def pi_fleet_lab(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("lab tests need root (network and mount namespaces)")
    directory = tmp_path_factory.mktemp("pi") / "pi-fleet"
    shutil.copytree(REPO / "examples" / "pi-fleet", directory)
    cache = Path(os.environ.get("ORCH_TEST_CACHE", Path.home() / ".cache" / "orch-test"))
    env = dict(os.environ, ORCH_HOME=str(cache / "pi-fleet-home"), ORCH_LAB_PREFIX=f"t{secrets.token_hex(2)}-")
    layout = lab_layout(load_desired(str(directory)).fleet, environ=env)
    try:
        t = time.monotonic()
        first = orch(["apply", str(directory)], env)
        print(f"pi-fleet first apply (images cached): {time.monotonic() - t:.1f} s")
        yield {"dir": directory, "env": env, "layout": layout, "first": first}
    finally:
        LabMachine(layout).down()


def test_its_lab_is_arm64_and_armv7_behind_2mbit_links(pi_fleet_lab):
    first = pi_fleet_lab["first"]
    assert first.returncode == 0, first.stdout + first.stderr
    hosts = pi_fleet_lab["layout"].hosts()
    assert [(h.name, h.platform) for h in hosts] == [
        ("arm64-1", "linux/arm64"), ("armv7-1", "linux/arm/v7"), ("armv7-2", "linux/arm/v7")]
    for h in hosts:
        outside = subprocess.run(["tc", "qdisc", "show", "dev", h.veth_root], capture_output=True, text=True)
        inside = subprocess.run(["ip", "netns", "exec", h.netns, "tc", "qdisc", "show", "dev", "eth0"],
                                capture_output=True, text=True)
        assert "tbf" in outside.stdout and "rate 2Mbit" in outside.stdout, outside.stdout
        assert "tbf" in inside.stdout and "rate 2Mbit" in inside.stdout, inside.stdout
        assert f"{h.name} ({h.platform}): 4 blob(s) to ship" in first.stdout


def test_every_host_serves_the_page_from_a_container_of_its_own_architecture(pi_fleet_lab):
    for h in pi_fleet_lab["layout"].hosts():
        with urllib.request.urlopen(f"http://{h.address}:80/", timeout=5) as resp:
            assert b"Raspberry Pi status page" in resp.read()
        res = orch(["exec", "status-page", str(pi_fleet_lab["dir"]), "--host", h.name, "--",
                    "/bin/busybox", "uname", "-m"], pi_fleet_lab["env"], timeout=120)
        assert (res.returncode, res.stdout.strip()) == (0, UNAME[h.platform]), res.stderr


def test_applying_again_changes_nothing(pi_fleet_lab):
    again = orch(["apply", str(pi_fleet_lab["dir"])], pi_fleet_lab["env"])
    assert again.returncode == 0 and "up to date: 3 host(s)" in again.stdout, again.stdout + again.stderr
