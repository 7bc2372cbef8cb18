"""Shipping blobs to a real agent over SSH: a dropped link resumes, and the blob is verified."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import threading
import time

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from orchestrator.agent.install import install_agent_and_serve
from orchestrator.errors import AgentError
from orchestrator.transport.shipper import reconnecting_client, ship_blobs
from orchestrator.image.store import Store
from tests.conftest import make_lab, remove_lab

SIZE = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def slow_lab():
    """One host behind a 64 Mbit/s link, so a 24 MiB transfer takes about 3 s: time to cut it."""
    the_lab = make_lab(f"test-ship-{os.getpid() % 10000}", amd64=1, arm64=0, link_rate="64mbit")
    try:
        yield the_lab
    finally:
        remove_lab(the_lab)


@pytest.fixture()
def agent(slow_lab, tmp_path):
    pyz, digest = build_agent_pyz(str(tmp_path))
    host = slow_lab.hosts[0]
    client = install_agent_and_serve(slow_lab.pool.get(host.name), str(pyz), digest)
    return slow_lab, host, client


def big_blob(tmp_path):
    store = Store(str(tmp_path / "store")).ensure()
    data = os.urandom(SIZE)
    digest = store.put_bytes(data)
    return store, digest


def sshd_sessions(lab, host):
    """sshd processes serving connections on that host (not the listener)."""
    listener = next(s["pid"] for s in __import__("orchestrator.lab.machine", fromlist=["x"]).LabMachine(
        lab.layout).status() if s["name"] == host.name)
    pids = subprocess.run(["ip", "netns", "pids", host.netns], capture_output=True, text=True).stdout.split()
    out = []
    for pid in map(int, pids):
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "sshd" and pid != listener:
            out.append(pid)
    return out


def test_a_cut_connection_resumes_and_the_blob_is_verified(agent, tmp_path):
    lab, host, client = agent
    store, digest = big_blob(tmp_path)
    part = lab.layout.host(host.name).var_lib_orch / "blobs" / "incoming" / (digest.split(":")[1] + ".part")
    cut = threading.Event()

    def cutter():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if part.exists() and part.stat().st_size > SIZE // 3:
                for pid in sshd_sessions(lab, host):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass          # a session that ended on its own meanwhile
                cut.set()
                return
            time.sleep(0.02)

    killer = threading.Thread(target=cutter)
    killer.start()
    result = ship_blobs(reconnecting_client(lab.pool, host.name, client.path), [(digest, SIZE)],
                        store.open_blob, max_wait=0.5)
    killer.join()
    assert cut.is_set(), "the transfer ended before it could be cut"
    assert result.attempts >= 2
    assert result.bytes_sent < 1.2 * SIZE, f"{result.bytes_sent} bytes sent for a {SIZE} byte blob"
    final = lab.layout.host(host.name).var_lib_orch / "blobs" / "sha256" / digest.split(":")[1]
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest.split(":")[1]
    assert reconnecting_client(lab.pool, host.name, client.path)().have([digest])["present"] == [digest]


def test_a_corrupted_blob_is_refused_and_never_kept(agent, tmp_path):
    lab, host, client = agent
    store = Store(str(tmp_path / "store2")).ensure()
    good = os.urandom(4096)
    digest = store.put_bytes(good)
    # corrupt the local copy after it was stored under its digest: the agent must notice
    path = store.blob_path(digest)
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.write(b"X")
    with pytest.raises(AgentError, match="does not match"):
        ship_blobs(reconnecting_client(lab.pool, host.name, client.path), [(digest, len(good))], store.open_blob)
    assert client.have([digest])["present"] == []


def our_ssh_clients():
    """The OpenSSH clients this test process started to stream `receive` (our own children)."""
    out = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and argv[0].endswith(b"ssh") and any(b"receive" in a for a in argv):
            out.append(int(pid))
    return out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_a_transfer_whose_ssh_client_died_from_a_signal_resumes(agent, tmp_path, sig):
    lab, host, client = agent
    store, digest = big_blob(tmp_path)
    part = lab.layout.host(host.name).var_lib_orch / "blobs" / "incoming" / (digest.split(":")[1] + ".part")
    killed = []

    def killer():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            if part.exists() and part.stat().st_size > SIZE // 3:
                for pid in our_ssh_clients():
                    os.kill(pid, sig)
                    killed.append(pid)
            time.sleep(0.02)

    t = threading.Thread(target=killer)
    t.start()
    result = ship_blobs(reconnecting_client(lab.pool, host.name, client.path), [(digest, SIZE)],
                        store.open_blob, max_wait=0.5)
    t.join()
    assert killed, "the transfer ended before its client could be killed"
    assert result.attempts >= 2 and result.bytes_sent < 1.2 * SIZE
    final = lab.layout.host(host.name).var_lib_orch / "blobs" / "sha256" / digest.split(":")[1]
    assert hashlib.sha256(final.read_bytes()).hexdigest() == digest.split(":")[1]
