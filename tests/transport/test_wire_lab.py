"""Layers as xz recipes, through `orch apply` to a real lab host (sshd, the agent, runc): the
host keeps layers unpacked without their gzip blobs, a one-file change ships about that file,
and a fleet's bandwidth cap holds."""
from __future__ import annotations

import secrets
import shutil
import time
import urllib.request
from pathlib import Path

import pytest

from orchestrator.fleet.deploy import apply, observe, prepare
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.transport.ssh import ConnectionPool
from tests.conftest import REPO, fleet_lab_home

LAB = f"test-wire-{secrets.token_hex(2)}"


def project(root: Path, fleet_extra: str) -> Path:
    d = root / "p"
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(REPO / "manifests" / "hello", d / "hello")
    shutil.copy(REPO / "manifests" / "orch.lock", d / "orch.lock")
    (d / "fleet.yaml").write_text(f"kind: Fleet\nname: {LAB}\n{fleet_extra}lab: {{hosts: 1, arm64: 0}}\n")
    text = (REPO / "manifests" / "hello.yaml").read_text()
    text = text.replace("platforms: [linux/amd64, linux/arm64]", "platforms: [linux/amd64]")
    (d / "hello.yaml").write_text(text.replace(
        "strategy: {canary: 1, max_parallel: 1, monitor: 2s, on_failure: rollback}",
        "strategy: {canary: 0, max_parallel: 1}").replace("drain: 2s", "drain: 0s"))
    return d


@pytest.fixture(scope="module")
def wire_lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("wire")
    with fleet_lab_home(LAB, root / "home"):
        yield root


def run_apply(directory: Path):
    prep = prepare(str(directory), {})
    with ConnectionPool(h.target for h in prep.hosts) as pool:
        obs = observe(prep, pool)
        t = time.monotonic()
        report = apply(prep, obs, pool)
        took = time.monotonic() - t
    assert report.ok, report
    return prep, report, took


def body(address: str) -> bytes:
    with urllib.request.urlopen(f"http://{address}:8080/", timeout=5) as resp:
        return resp.read()


def test_layers_travel_as_recipes_and_a_one_file_change_ships_about_that_file(wire_lab):
    d = project(wire_lab, "wire: xz\n")
    prep, report, _ = run_apply(d)
    host = LabLayout(LabSpec(LAB)).hosts()[0]
    address = prep.hosts[0].target.address
    [release] = prep.releases
    manifest = release.manifests["linux/amd64"]
    layer_blobs = [b for b, _ in prep.store.blobs_for(manifest)[2:]]
    gz = sum(n for _, n in prep.store.blobs_for(manifest)[2:])
    sent = report.shipped[prep.hosts[0].name].bytes_sent
    assert sent < gz, (sent, gz)                             # xz recipes, smaller than the gzip
    blobs = {p.name for p in (host.var_lib_orch / "blobs" / "sha256").iterdir()}
    assert not blobs & {b[7:] for b in layer_blobs}           # kept unpacked, not as blobs
    assert len(list((host.var_lib_orch / "layers").iterdir())) == len(layer_blobs)
    first = body(address)

    page = d / "hello" / "index.html.j2"
    page.write_text(page.read_text() + "<!-- changed -->\n")
    prep, report, _ = run_apply(d)
    sent = report.shipped[prep.hosts[0].name].bytes_sent
    assert sent < 4000, sent                                  # that page, its layer's headers
    assert body(address) != first and b"changed" in body(address)


def test_a_fleet_bandwidth_cap_holds(wire_lab):
    d = project(wire_lab, "bandwidth: 2mbit\nwire: gzip\n")
    noise = d / "hello" / "www" / "noise.bin"
    noise.write_bytes(secrets.token_bytes(2_500_000))           # 2.5 MB that gzip cannot shrink
    prep, report, took = run_apply(d)
    sent = report.shipped[prep.hosts[0].name].bytes_sent
    assert sent > 2_500_000
    assert took >= sent / 250_000 * 0.95, (sent, took)       # 2 Mbit/s = 250 kB/s at most
