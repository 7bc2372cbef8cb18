"""The install step leaves no network service on that orch does not use (.ci/quiet-services,
run by .ci/setup around apt-get), checked on a lab host that boots systemd as PID 1.

The host has no Debian mirror in reach (test traffic stays inside the lab), so the package
is played by a unit of the same name that listens on every interface, as the packaged
registry does; what is checked is what systemd then does with it."""
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, own_lab

SCRIPT = "/root/quiet-services"
UNIT = ("[Unit]\nDescription=stand-in for Debian's docker-registry\n"
        "[Service]\nExecStart=/usr/bin/python3 -m http.server 5000 --bind 0.0.0.0\n"
        "[Install]\nWantedBy=multi-user.target\n")
LISTENING_5000 = ("import sys; lines = open('/proc/net/tcp').read().splitlines()[1:]; "
                  "print(any(l.split()[1].endswith(':1388') and l.split()[3] == '0A' for l in lines))")


@pytest.fixture(scope="module")
def booted_lab():
    with own_lab("quiet", amd64=0, arm64=0, booted=1) as the_lab:
        yield the_lab


def sh(lab, host, line: str, timeout: float = 60):
    return lab.run(host, ["sh", "-c", line], timeout=timeout)


def registry_state(lab, host):
    rc, enabled, _ = sh(lab, host, "systemctl is-enabled docker-registry.service || true")
    rc, active, _ = sh(lab, host, "systemctl is-active docker-registry.service || true")
    rc, listening, err = lab.run(host, ["python3", "-c", LISTENING_5000])
    assert rc == 0, err
    return enabled.decode().strip(), active.decode().strip(), listening.decode().strip() == "True"


def test_a_fresh_install_never_starts_the_registry_and_ssh_stays(booted_lab):
    host = booted_lab.hosts[0]
    booted_lab.put(host, Path(REPO) / ".ci" / "quiet-services", SCRIPT, mode=0o755)
    rc, out, err = sh(booted_lab, host, "systemctl is-system-running --wait; true")
    # setup's first phase, then what the package's postinst does (enable, start), then the second
    assert sh(booted_lab, host, f"{SCRIPT} before docker-registry runc")[0] == 0
    rc, out, err = booted_lab.run(host, ["sh", "-c", "cat > /lib/systemd/system/docker-registry.service && "
                                         "systemctl daemon-reload && "
                                         "(systemctl enable docker-registry.service; "
                                         "systemctl start docker-registry.service) 2>&1; true"],
                                  input=UNIT.encode())
    assert rc == 0, err
    assert sh(booted_lab, host, f"{SCRIPT} after docker-registry runc")[0] == 0
    assert registry_state(booted_lab, host) == ("masked", "inactive", False)
    # openssh-server was there before: the machine's sshd (our way in) is left as it was
    assert sh(booted_lab, host, "systemctl is-active ssh")[1].strip() == b"active"


def test_a_machine_set_up_before_gets_its_running_registry_turned_off(booted_lab):
    host = booted_lab.hosts[0]
    rc, out, err = booted_lab.run(host, ["sh", "-c", "cat > /lib/systemd/system/docker-registry.service && "
                                         "systemctl unmask docker-registry.service && systemctl daemon-reload && "
                                         "systemctl enable --now docker-registry.service"],
                                  input=UNIT.encode())
    assert rc == 0, err
    end = time.monotonic() + 30
    while registry_state(booted_lab, host)[1:] != ("active", True):   # what an older setup left
        assert time.monotonic() < end, registry_state(booted_lab, host)
        time.sleep(0.5)
    assert sh(booted_lab, host, f"{SCRIPT} after")[0] == 0
    assert registry_state(booted_lab, host) == ("masked", "inactive", False)
