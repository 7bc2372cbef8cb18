"""Pure parts of booted lab hosts: their kinds in the layout, the nspawn argv, their roots."""
from pathlib import Path

import pytest

from orchestrator.errors import LabError
from orchestrator.lab import roots
from orchestrator.lab.layout import LabLayout, LabSpec
from orchestrator.lab.power import host_files, render_nspawn_argv, render_overlay_options


def test_booted_hosts_come_after_the_plain_ones_and_keep_their_addresses():
    plain = LabLayout(LabSpec("x", amd64=2, arm64=1)).hosts()
    mixed = LabLayout(LabSpec("x", amd64=2, arm64=1, booted=1, bullseye=2)).hosts()
    assert [(h.name, h.address) for h in mixed[:3]] == [(h.name, h.address) for h in plain]
    assert [(h.name, h.platform, h.os) for h in mixed[3:]] == [
        ("booted-1", "linux/amd64", "bookworm"), ("bullseye-1", "linux/amd64", "bullseye"),
        ("bullseye-2", "linux/amd64", "bullseye")]
    assert not any(h.booted for h in plain) and all(h.booted for h in mixed[3:])
    assert mixed[3].pid_file.name == "nspawn.pid" and plain[0].pid_file.name == "sshd.pid"


def test_a_lab_of_booted_hosts_only_is_valid_and_counts_them():
    LabSpec("b", amd64=0, arm64=0, bullseye=1).validate()
    with pytest.raises(LabError, match="at most 240"):
        LabSpec("b", amd64=200, booted=41).validate()
    with pytest.raises(LabError, match="--booted -1"):
        LabSpec("b", booted=-1).validate()


def test_nspawn_boots_the_hosts_disk_in_its_network_namespace():
    host = LabLayout(LabSpec("n", amd64=0, arm64=0, booted=1), Path("/s")).hosts()[0]
    argv = render_nspawn_argv("/usr/bin/systemd-nspawn", host)
    assert argv[:6] == ["/usr/bin/systemd-nspawn", "--quiet", "-D", "/s/n/hosts/booted-1/rootfs", "-b",
                        "--register=no"]
    assert "--keep-unit" in argv
    assert f"--network-namespace-path=/run/netns/{host.netns}" in argv
    assert "--bind=/s/n/hosts/booted-1/var-lib-orch:/var/lib/orch" in argv
    assert render_overlay_options(Path("/r/bookworm-1"), host) == (
        "lowerdir=/r/bookworm-1,upperdir=/s/n/hosts/booted-1/disk,workdir=/s/n/hosts/booted-1/disk-work")


def test_host_files_give_each_host_its_own_key_and_the_labs_authorized_key():
    host = LabLayout(LabSpec("n", amd64=0, arm64=0, bullseye=1)).hosts()[0]
    files = host_files(host, "PRIVATE", "ssh-ed25519 AAAA host", "ssh-ed25519 BBBB user")
    assert files["etc/ssh/ssh_host_ed25519_key"] == ("PRIVATE", 0o600)
    assert files["root/.ssh/authorized_keys"] == ("ssh-ed25519 BBBB user", 0o600)
    assert files["etc/orch/platform"][0] == "linux/amd64\n"
    assert files["etc/hostname"][0] == "bullseye-1\n"


def test_roots_are_named_by_release_and_content(monkeypatch):
    a, b = roots.root_key("bookworm"), roots.root_key("bullseye")
    assert a.startswith("bookworm-") and b.startswith("bullseye-") and a[9:] != b[9:]
    monkeypatch.setattr(roots, "PACKAGES", roots.PACKAGES + ("curl",))
    assert roots.root_key("bookworm") != a


def test_unknown_release_is_refused(tmp_path):
    with pytest.raises(LabError, match="no lab root for Debian 'buster'"):
        roots.ensure_root(tmp_path, "buster")


def test_mmdebstrap_argv_and_mirror(tmp_path):
    (tmp_path / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://security.example/debian-security\n")
    mirror = roots.debian_mirror(tmp_path, tmp_path / "none")
    assert mirror == "http://mirror.example/debian"
    argv = roots.render_mmdebstrap_argv("mmdebstrap", "bullseye", Path("/t.tar"), mirror)
    assert argv[:4] == ["mmdebstrap", "--quiet", "--variant=minbase", "--architectures=amd64"]
    assert "systemd" in argv[4] and "python3" in argv[4] and "openssh-server" in argv[4]
    assert argv[5:] == ["bullseye", "/t.tar", "deb http://mirror.example/debian bullseye main"]
    foreign = roots.render_mmdebstrap_argv("mmdebstrap", "bookworm", Path("/t.tar"), mirror, "armhf")
    assert foreign[3] == "--architectures=armhf,amd64" and "nftables:amd64" in foreign[4] and "runc:amd64" in foreign[4]


def test_an_arm_root_is_named_by_its_arch_and_never_matches_another_releases_prune(tmp_path):
    amd, arm64, armhf = (roots.root_key("bookworm", a) for a in ("amd64", "arm64", "armhf"))
    assert amd == roots.root_key("bookworm")            # the amd64 name is what it always was
    assert arm64.startswith("arm64-bookworm-") and armhf.startswith("armhf-bookworm-")
    assert len({amd[-12:], arm64[-12:], armhf[-12:]}) == 3
    assert roots.base_key("bookworm", "arm64") != roots.base_key("bookworm", "armhf")
    for name in ("bookworm-000000000000", "arm64-bookworm-000000000000", "armhf-bookworm-000000000000",
                 amd, arm64, "bookworm-000000000000.tmp"):
        (tmp_path / name).mkdir()
    removed = roots.run_prune_roots(tmp_path, "bookworm", keep=tmp_path / arm64, arch="arm64")
    assert removed == [tmp_path / "arm64-bookworm-000000000000"]
    removed = roots.run_prune_roots(tmp_path, "bookworm", keep=tmp_path / amd)
    assert removed == [tmp_path / "bookworm-000000000000"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [amd, arm64, "armhf-bookworm-000000000000", "bookworm-000000000000.tmp"])


def test_the_root_enables_writable_cgroups_and_masks_timers():
    links = roots.render_root_links()
    assert links["etc/systemd/system/sysinit.target.wants/orch-lab-cgroups.service"].endswith(
        "orch-lab-cgroups.service")
    assert links["etc/systemd/system/apt-daily.timer"] == "/dev/null"
    assert "ExecStart=/usr/local/sbin/orch-lab-cgroups" in roots.render_root_files()[
        "etc/systemd/system/orch-lab-cgroups.service"][0]
