"""The build machine against hostile base images and run steps: base layers go through the
runtime's one safe unpacker (refused, named, nothing written outside, nothing left behind),
and a `run:` step sees nothing of the build machine and can write nothing outside its box."""
import gzip
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import Path

import pytest

from orchestrator.errors import BuildError
from orchestrator.image import build_services
from orchestrator.manifest import load_desired
from runtime import bundle
from tests.image.conftest import write_tree
from tests.runtime import hostile
from tests.runtime import imagekit as ik

SERVICE = """\
kind: Service
name: h
image:
  from: {oci: base}
  platforms: [linux/amd64]
  steps:
    - run: [/bin/busybox, sh, -c, SCRIPT]
  cmd: [/bin/busybox, "true"]
"""


def build(tmp_path, home, layers, script="true", name="m", diff_ids=ik.diff_id):
    """Build service h from an OCI layout holding ``layers``, with one run step."""
    src = tmp_path / name
    hostile.write_oci_layout(ik.make_image({"linux/amd64": layers}, diff_ids=diff_ids),
                             str(src / "base"))
    text = SERVICE.replace("SCRIPT", '"' + script.replace('"', '\\"') + '"')
    write_tree(src, {"h.yaml": text})
    return build_services(load_desired(str(src), {}), home)["h"]


def workroot(home) -> Path:
    return Path(home.root).parent / "work"


@pytest.fixture
def outside(tmp_path):
    """A directory of the build machine that no image may touch, with a secret in it."""
    d = tmp_path / "outside"
    d.mkdir()
    (d / "secret").write_text("build-machine-secret\n")
    return d


def hostile_entries(outside: Path):
    o = str(outside)
    return {
        "absolute name": ([ik.file_entry(o + "/evil", b"x")], "absolute path"),
        "dot-dot": ([ik.file_entry("../" * 12 + o.lstrip("/") + "/evil", b"x")],
                    "escapes the root"),
        "escaping symlink": ([ik.link_entry("esc", "../" * 12 + o.lstrip("/")),
                              ik.file_entry("esc/evil", b"x")], "symlink escapes"),
        "escaping hardlink": ([ik.link_entry("h", "../" * 12 + o.lstrip("/") + "/secret",
                                             hard=True)], "hardlink escapes"),
        "hardlink through a symlink": ([ik.link_entry("s", o),
                                        ik.link_entry("stolen", "s/secret", hard=True)],
                                       "hardlink target missing"),
        "char device": ([hostile.device("dev/mem", 1, 1)], "device node"),
        "block device": ([hostile.device("dev/disk", *_root_dev(), block=True)], "device node"),
    }


def _root_dev():
    st = os.stat("/")
    return os.major(st.st_dev), os.minor(st.st_dev)


CASES = ["absolute name", "dot-dot", "escaping symlink", "escaping hardlink",
         "hardlink through a symlink", "char device", "block device"]


@pytest.mark.parametrize("case", CASES)
def test_hostile_base_layers_are_refused_and_named(tmp_path, home, outside, case):
    entries, words = hostile_entries(outside)[case]
    evil = ik.tar_bytes([ik.dir_entry("bin")] + entries)
    before = sorted(os.listdir(outside))
    with pytest.raises(BuildError) as err:
        build(tmp_path, home, [ik.tar_bytes([ik.dir_entry("etc")]), evil])
    msg = str(err.value)
    assert words in msg and ik.digest(evil) in msg and "layer 2/2" in msg, msg
    assert "oci:" in msg and "linux/amd64" in msg, msg
    assert sorted(os.listdir(outside)) == before
    assert os.stat(outside / "secret").st_nlink == 1
    assert not any(workroot(home).iterdir()) if workroot(home).exists() else True
    assert "orch-build" not in Path("/proc/self/mountinfo").read_text()


def test_a_base_bomb_is_stopped_and_named(tmp_path, home, monkeypatch):
    from orchestrator.image import sandbox
    monkeypatch.setattr(sandbox, "BUDGET", sandbox.unpack.Budget(max_bytes=8 << 20))
    bomb = hostile.zeros_bomb(64 << 20)
    with pytest.raises(BuildError, match=r"layer 1/1 .*more than 8388608 bytes"):
        build(tmp_path, home, [bomb], diff_ids=ik.digest)
    assert not any(workroot(home).iterdir())


def test_build_sandbox_config_exposes_nothing_of_the_machine():
    cfg = bundle.render_build_config(["/bin/true"], ["PATH=/bin"], "/srv")
    assert cfg["root"] == {"path": "rootfs", "readonly": False}
    assert cfg["process"]["noNewPrivileges"] is True and cfg["process"]["cwd"] == "/srv"
    assert cfg["process"]["args"] == ["/bin/true"] and cfg["process"]["env"] == ["PATH=/bin"]
    types = {n["type"] for n in cfg["linux"]["namespaces"]}
    assert {"pid", "network", "ipc", "uts", "mount"} <= types      # no network at build time
    assert not [m for m in cfg["mounts"] if m["type"] == "bind"]   # nothing of the host
    assert {m["destination"] for m in cfg["mounts"]} >= {"/proc", "/dev", "/sys", "/tmp"}
    assert cfg["linux"]["resources"]["devices"] == [{"allow": False, "access": "rwm"}]
    caps = set(cfg["process"]["capabilities"]["bounding"])
    assert not caps & {"CAP_SYS_ADMIN", "CAP_MKNOD", "CAP_SYS_PTRACE", "CAP_SYS_MODULE",
                       "CAP_DAC_READ_SEARCH", "CAP_NET_ADMIN"}
    assert set(bundle.MASKED) <= set(cfg["linux"]["maskedPaths"])   # as strict as a container
    assert set(bundle.READONLY) <= set(cfg["linux"]["readonlyPaths"])
    assert "cgroupsPath" not in cfg["linux"]
    assert cfg["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO"  # the container filter


# --- real run steps (runc) -----------------------------------------------------------------

def layer_files(home, built) -> dict:
    top = built.images["linux/amd64"].layers[-1]["digest"]
    tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(home.read_bytes(top))))
    return {m.name: tar.extractfile(m).read() if m.isfile() else None for m in tar}


@pytest.fixture
def busybox_base(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]))


def test_a_hardlink_through_a_symlink_cannot_copy_a_build_machine_file(tmp_path, home,
                                                                        outside, busybox_base):
    evil = ik.tar_bytes([ik.link_entry("s", str(outside)),
                         ik.link_entry("stolen", "s/secret", hard=True)])
    with pytest.raises(BuildError, match="hardlink target missing"):
        build(tmp_path, home, [busybox_base, evil], "cat /stolen > /leak")
    for blob in Path(home.root, "blobs", "sha256").iterdir():
        data = blob.read_bytes()
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert b"build-machine-secret" not in data


PROBE = """
r=/out; mkdir -p $r
cat {secret} > $r/read-secret 2>&1; echo $? >> $r/read-secret
echo pwned > {target} 2>$r/write-outside; echo $? >> $r/write-outside
ls /proc/1/root/ > $r/proc1-root 2>&1
mknod /tmp/disk b {major} {minor} 2>$r/mknod; echo $? >> $r/mknod
head -c 512 /tmp/disk > /dev/null 2>$r/read-disk; echo $? >> $r/read-disk
mount -t tmpfs t /mnt 2>$r/mount; echo $? >> $r/mount
cat /proc/net/dev > $r/net
hostname > $r/hostname
echo 1 > /proc/sysrq-trigger 2>$r/sysrq; echo $? >> $r/sysrq
grep CapEff /proc/self/status > $r/caps
grep ' / ' /proc/self/mountinfo > $r/root-mount
"""


def test_a_run_step_sees_and_touches_nothing_of_the_build_machine(tmp_path, home, outside,
                                                                   busybox_base):
    target = tmp_path / "written-from-the-step"
    major, minor = _root_dev()
    script = "; ".join(line for line in PROBE.format(
        secret=outside / "secret", target=target, major=major, minor=minor).splitlines() if line)
    built = build(tmp_path, home, [busybox_base], script)
    out = {k[4:]: v.decode() for k, v in layer_files(home, built).items()
           if k.startswith("out/") and v is not None}
    assert not target.exists()                                        # nothing written outside
    assert "build-machine-secret" not in out["read-secret"]
    assert out["read-secret"].split()[-1] != "0"
    assert out["write-outside"].split()[-1] != "0"                    # its dir is not there
    assert "written-from-the-step" not in str(layer_files(home, built))
    assert set(out["proc1-root"].split()) <= {"bin", "etc", "www", "out", "proc", "sys", "dev",
                                              "tmp", "mnt"}
    assert out["mknod"].split()[-1] != "0" and out["read-disk"].split()[-1] != "0"
    assert out["mount"].split()[-1] != "0" and out["sysrq"].split()[-1] != "0"
    assert [l.split(":")[0].strip() for l in out["net"].splitlines()[2:]] == ["lo"]
    assert out["hostname"].strip() == "orch-build"
    eff = int(out["caps"].split()[-1], 16)
    assert not eff & (1 << 21) and not eff & (1 << 27)               # no SYS_ADMIN, no MKNOD
    assert "nosuid" in out["root-mount"] and "nodev" in out["root-mount"]


@pytest.fixture
def open_home(monkeypatch):
    """An ORCH_HOME every user could traverse (pytest's tmp dirs are 0700): only what orch
    itself makes can keep other users out."""
    import tempfile
    from orchestrator.image.store import Store
    d = tempfile.mkdtemp(prefix="orch-sandbox-test-", dir="/tmp")
    os.chmod(d, 0o755)
    monkeypatch.setenv("ORCH_HOME", d)
    yield Store(os.path.join(d, "store"))
    shutil.rmtree(d)


def test_setuid_files_of_a_base_are_out_of_reach_while_a_step_runs(tmp_path, open_home,
                                                                     static_busybox):
    home = open_home
    bb = Path(static_busybox["linux/amd64"]).read_bytes()
    base = ik.tar_bytes([ik.dir_entry("bin"), ik.file_entry("bin/busybox", bb, 0o755),
                         ik.file_entry("bin/suid", bb, 0o4755)])
    found = {}

    def probe():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "ready" not in found:
            for ready in workroot(home).glob("run-*/upper/ready"):
                run = ready.parent.parent
                found["ready"] = str(run)
                found["mode"] = os.stat(run).st_mode & 0o777
                for where in ("lower", "bundle/rootfs"):
                    p = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534",
                                        "--clear-groups", "/bin/sh", "-c",
                                        'exec "$0" id -u', str(run / where / "bin/suid")],
                                       capture_output=True, text=True)
                    found[where] = (p.returncode, p.stdout + p.stderr)
                mounts = [l for l in Path("/proc/self/mountinfo").read_text().splitlines()
                          if str(run / "bundle/rootfs") in l]
                found["mount"] = mounts[0] if mounts else ""
            time.sleep(0.05)

    t = threading.Thread(target=probe)
    t.start()
    try:
        build(tmp_path, home, [base], "touch /ready; sleep 2")
    finally:
        t.join()
    assert found.get("ready"), "the step never ran"
    assert found["mode"] == 0o700
    for where in ("lower", "bundle/rootfs"):
        rc, out = found[where]
        assert rc != 0 and "Permission denied" in out, (where, out)
    assert "nosuid" in found["mount"] and "nodev" in found["mount"], found["mount"]


# --- reading a hostile base without unpacking it (paths for copy steps, USER lookups) -------

COPY_SERVICE = """\
kind: Service
name: c
image:
  from: {oci: base}
  platforms: [linux/amd64]
  steps:
    - copy: {src: extra.txt, dest: /srv/extra.txt}
  cmd: [/bin/true]
"""


def test_a_header_bomb_in_a_base_is_refused_when_its_names_are_read(tmp_path, home):
    bomb = hostile.pax_header_bomb(8 << 20)
    src = tmp_path / "c"
    hostile.write_oci_layout(ik.make_image({"linux/amd64": [bomb]}), str(src / "base"))
    write_tree(src, {"c.yaml": COPY_SERVICE, "extra.txt": "x\n"})
    with pytest.raises(BuildError, match=r"layer sha256:[0-9a-f]{64}.*header is larger"):
        build_services(load_desired(str(src), {}), home)


def test_a_huge_passwd_in_a_base_is_not_read_into_memory(tmp_path, home):
    from orchestrator.image import dockersteps
    bomb = hostile.zeros_bomb(1 << 30, name="etc/passwd")
    home.ensure().put_bytes(bomb)
    with pytest.raises(BuildError, match=r"etc/passwd.*larger than"):
        dockersteps.read_from_layers(home, [{"digest": ik.digest(bomb)}], "etc/passwd")
