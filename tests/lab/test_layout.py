import pytest

from orchestrator.errors import LabError
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.render import render_known_hosts_line, render_sshd_config


def test_default_lab_is_two_amd64_and_one_arm64():
    hosts = LabLayout(LabSpec()).hosts()
    assert [(h.name, h.platform) for h in hosts] == [
        ("amd64-1", "linux/amd64"), ("amd64-2", "linux/amd64"), ("arm64-1", "linux/arm64")]


def test_addresses_are_unique_and_inside_the_lab_subnet():
    lay = LabLayout(LabSpec("big", amd64=100, arm64=50, armv7=50))
    hosts = lay.hosts()
    prefix = lay.gateway.rsplit(".", 1)[0] + "."
    assert len({h.address for h in hosts}) == 200
    assert all(h.address.startswith(prefix) and h.address != lay.gateway for h in hosts)


@pytest.mark.parametrize("name", ["lab", "test-ab12", "a-very-long-lab-name-xyz"])
def test_interface_names_fit_the_kernel_limit(name):
    lay = LabLayout(LabSpec(name, amd64=150, arm64=50))
    names = [lay.bridge] + [n for h in lay.hosts() for n in (h.veth_root, h.veth_host)]
    assert all(len(n) <= 15 for n in names)
    assert len(set(names)) == len(names)


def test_two_labs_get_different_names_and_subnets():
    a, b = LabLayout(LabSpec("lab")), LabLayout(LabSpec("test-1"))
    assert a.bridge != b.bridge and a.subnet != b.subnet
    assert {h.netns for h in a.hosts()}.isdisjoint(h.netns for h in b.hosts())


@pytest.mark.parametrize("spec, message", [
    (LabSpec("Lab"), "lab name"),
    (LabSpec("lab", amd64=0, arm64=0), "at least one host"),
    (LabSpec("lab", amd64=-1), "--hosts -1"),
    (LabSpec("lab", link_rate="fast"), "--link-rate"),
    (LabSpec("lab", amd64=200, arm64=41), "at most 240"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(LabError, match=message):
        spec.validate()


def test_foreign_platforms_need_their_qemu():
    assert LabLayout(LabSpec(amd64=1, arm64=0)).foreign_qemu() == ()
    assert LabLayout(LabSpec(arm64=2, armv7=1)).foreign_qemu() == ("aarch64", "arm")


def test_sshd_config_is_key_only_and_listens_on_the_host_address(tmp_path):
    host = LabLayout(LabSpec()).hosts()[1]
    text = render_sshd_config(host, tmp_path / "authorized_keys")
    assert f"ListenAddress {host.address}" in text
    assert "PasswordAuthentication no" in text and "UsePAM no" in text
    assert f"HostKey {host.host_key}" in text


@pytest.mark.parametrize("port, expected", [(22, "10.1.2.3 ssh-ed25519 AAAA"), (2222, "[10.1.2.3]:2222 ssh-ed25519 AAAA")])
def test_known_hosts_line(port, expected):
    assert render_known_hosts_line("10.1.2.3", port, "ssh-ed25519 AAAA comment\n") == expected


def test_host_kinds_come_from_the_platform_table_and_booted_arm_hosts_are_emulated():
    from orchestrator.lab import layout
    from runtime import platforms
    assert {layout.PLATFORMS[p.lab] for p in platforms.TABLE} == set(platforms.NAMES)
    assert all(layout.PLATFORMS[k] in platforms.NAMES for k in layout.HOST_KINDS)
    lay = LabLayout(LabSpec("pi", amd64=1, arm64=0, booted_arm64=1, booted_armv7=1))
    hosts = {h.name: h for h in lay.hosts()}
    assert [(n, h.platform, h.os, h.debian_arch, h.emulated) for n, h in hosts.items()] == [
        ("amd64-1", "linux/amd64", None, "amd64", False),
        ("booted-arm64-1", "linux/arm64", "bookworm", "arm64", True),
        ("booted-armv7-1", "linux/arm/v7", "bookworm", "armhf", True)]
    assert lay.foreign_qemu() == ("aarch64", "arm")
    assert lay.spec.platforms() == ("linux/amd64", "linux/arm64", "linux/arm/v7")


def test_a_new_kind_does_not_move_the_addresses_of_the_old_ones():
    old = LabLayout(LabSpec("mv", amd64=1, arm64=1, armv7=1, booted=1, bullseye=1)).hosts()
    new = LabLayout(LabSpec("mv", amd64=1, arm64=1, armv7=1, booted=1, bullseye=1, booted_armv7=1)).hosts()
    assert [(h.name, h.address) for h in new[:5]] == [(h.name, h.address) for h in old]


def test_a_negative_booted_arm_count_names_its_option():
    with pytest.raises(LabError, match="--booted-armv7 -1"):
        LabSpec("x", booted_armv7=-1).validate()
