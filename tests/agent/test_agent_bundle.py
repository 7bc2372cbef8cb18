"""The agent zipapp is reproducible, named by its digest, and runs on Python 3.9."""
import hashlib
import json
import os
import shutil
import subprocess
import zipfile

from orchestrator.agent.bundle import build_agent_pyz


def python39() -> str:
    """The real 3.9 interpreter (pyenv's shim on PATH only works with PYENV_VERSION set)."""
    import glob
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.9*/bin/python3.9")))
    return found[-1] if found else shutil.which("python3.9") or "python3.9"


def test_same_digest_twice_and_named_by_it(tmp_path):
    p1, d1 = build_agent_pyz(tmp_path / "a")
    p2, d2 = build_agent_pyz(tmp_path / "b")
    assert d1 == d2
    assert p1.read_bytes() == p2.read_bytes()
    assert d1 == "sha256:" + hashlib.sha256(p1.read_bytes()).hexdigest()
    assert d1.split(":")[1][:12] in p1.name
    with zipfile.ZipFile(p1) as z:
        names = z.namelist()
        assert names == sorted(names, key=lambda n: (n != "__main__.py", n))
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in z.infolist())
        assert not [n for n in names if n.endswith(".pyc")]


def test_runs_on_python39_and_reports_its_digest(tmp_path):
    py39 = python39()
    path, digest = build_agent_pyz(tmp_path)
    out = subprocess.run([py39, str(path), "--root", str(tmp_path / "r"), "--run",
                          str(tmp_path / "run"), "info"], capture_output=True, check=True,
                         env=dict(os.environ, PYENV_VERSION="3.9"))
    info = json.loads(out.stdout)
    assert info["agent_digest"] == digest
    assert info["python"].startswith("3.9.")
    assert info["runtime"] in ("runc", "crun")


def test_sources_are_cached_beside_the_pyz_with_bytecode(tmp_path):
    path, digest = build_agent_pyz(tmp_path / "a")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    for _ in range(2):
        out = subprocess.run(["/usr/bin/python3", str(path), "--root", str(tmp_path / "r"),
                              "--run", str(tmp_path / "run"), "info"], capture_output=True,
                             check=True, env=env)
        assert json.loads(out.stdout)["agent_digest"] == digest
    cache = path.parent / ".cache" / f"{path.name}-{path.stat().st_size}" / "runtime"
    assert (cache / "cli.py").is_file()
    assert any(p.name.startswith("cli.") for p in (cache / "__pycache__").iterdir())
    assert hashlib.sha256(path.read_bytes()).hexdigest() == digest.split(":")[1]   # untouched
    other = path.parent / "gone.pyz"                  # gc drops caches of agents no longer there
    (path.parent / ".cache" / "gone.pyz-123").mkdir()
    subprocess.run(["/usr/bin/python3", str(path), "--root", str(tmp_path / "r"), "--run",
                    str(tmp_path / "run"), "gc"], capture_output=True, check=True, env=env)
    assert not (path.parent / ".cache" / "gone.pyz-123").exists() and not other.exists()
    assert cache.is_dir()


def test_a_blue_green_swap_runs_on_python39(tmp_path):
    """The whole swap path (unpack, runc, veth, nft, health, stop) under Python 3.9, in a
    network namespace made here."""
    import secrets as _s

    from tests.runtime import imagekit as ik
    py39 = python39()
    ns = "orch-rt39-" + _s.token_hex(3)
    subprocess.run(["ip", "netns", "add", ns], check=True)
    path, _ = build_agent_pyz(tmp_path / "pyz")
    agent = ik.Agent(ik.local_runner(ns), [py39, str(path)], str(tmp_path / "root"),
                     str(tmp_path / "run"))
    try:
        base = ik.busybox_layer()
        imgs = [ik.make_image({"linux/amd64": [base, ik.tar_bytes([
            ik.dir_entry("www"), ik.file_entry("www/index.html", b"v%d" % i)])]})
            for i in range(2)]
        for img in imgs:
            agent.ship(img)
        spec = ik.deploy_spec(port=8080, monitor=0.3, drain=0.1)
        for img in imgs:
            rc, body = agent.apply({"w39": (img, spec)})
            assert rc == 0 and body["services"]["w39"]["ok"], body
        rc, st = agent.call("status")
        assert st["services"]["w39"]["slot"] == "b" and len(st["services"]["w39"]["slots"]) == 1
        assert agent.call("remove", "w39")[0] == 0
    finally:
        run = tmp_path / "run" / "runc"
        for cid in (os.listdir(run) if run.is_dir() else []):
            subprocess.run(["runc", "--root", str(run), "delete", "--force", cid])
        for line in open("/proc/self/mountinfo"):
            if str(tmp_path) in line.split()[4]:
                subprocess.run(["umount", line.split()[4]])
        subprocess.run(["ip", "netns", "del", ns], check=True)
