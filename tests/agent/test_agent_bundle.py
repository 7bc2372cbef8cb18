"""The agent zipapp is reproducible, named by its digest, and runs on Python 3.9."""
import hashlib
import json
import os
import subprocess
import time
import zipfile

import pytest

from orchestrator.agent.bundle import build_agent_pyz


@pytest.fixture(scope="module")
def bullseye_lab():
    """A booted Debian bullseye lab host: its python3 is 3.9, like Raspberry Pi OS bullseye, the
    oldest Python the agent supports (from the project's own set-up, not an interpreter that happens to be on this machine)."""
    from tests.conftest import own_lab
    with own_lab("py39", amd64=0, arm64=0, bullseye=1) as the_lab:
        yield the_lab


def put_agent(lab, host, pyz):
    from tests.runtime import imagekit as ik
    lab.run(host, ["mkdir", "-p", "/var/lib/orch/agent"])
    lab.put(host, pyz, REMOTE)
    return ik.Agent(lambda argv, input, timeout: lab.run(host, argv, input, timeout),
                    ["python3", REMOTE])


REMOTE = "/var/lib/orch/agent/test39.pyz"


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


def test_runs_on_python39_and_reports_its_digest(tmp_path, bullseye_lab):
    host = bullseye_lab.hosts[0]
    path, digest = build_agent_pyz(tmp_path)
    agent = put_agent(bullseye_lab, host, path)
    rc, info = agent.call("info")
    assert rc == 0, info
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
    agent = [str(path), "--root", str(tmp_path / "r"), "--run", str(tmp_path / "run")]
    subprocess.run(["/usr/bin/python3", *agent, "lock"], input=b'{"holder": "t", "token": "k"}',
                   capture_output=True, check=True, env=env)
    subprocess.run(["/usr/bin/python3", *agent, "gc"], input=b'{"lock": "k"}', capture_output=True,
                   check=True, env=env)
    assert not (path.parent / ".cache" / "gone.pyz-123").exists() and not other.exists()
    assert cache.is_dir()


def test_a_blue_green_swap_runs_on_python39(tmp_path, bullseye_lab, static_busybox):
    """The whole swap path (unpack, runc, veth, nft, health, stop) under Python 3.9, on a booted
    bullseye host (its own runc and nftables), reached over SSH like any host."""
    from tests.runtime import imagekit as ik
    host = bullseye_lab.hosts[0]
    path, _ = build_agent_pyz(tmp_path / "pyz")
    agent = put_agent(bullseye_lab, host, path)
    base = ik.busybox_layer(str(static_busybox["linux/amd64"]))
    imgs = [ik.make_image({"linux/amd64": [base, ik.tar_bytes([
        ik.dir_entry("www"), ik.file_entry("www/index.html", b"v%d" % i)])]})
        for i in range(2)]
    for img in imgs:
        agent.ship(img)
    spec = ik.deploy_spec(port=8080, monitor=0.3, drain=0.1)
    for i, img in enumerate(imgs):
        rc, body = agent.apply({"w39": (img, spec)})
        assert rc == 0 and body["services"]["w39"]["ok"], body
        assert ik.hammer_get(host.address, 8080) == b"v%d" % i
    deadline = time.monotonic() + 10          # the old slot stops after the answer
    while True:
        rc, st = agent.call("status")
        if len(st["services"]["w39"]["slots"]) == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert st["services"]["w39"]["slot"] == "b" and len(st["services"]["w39"]["slots"]) == 1
    assert agent.call("remove", "w39")[0] == 0


def _launch(path, tmp_path, verb, *python_flags, env=None, input=b""):
    from orchestrator.agent.client import launch_argv
    argv = launch_argv(str(path), "--root", str(tmp_path / "r"), "--run", str(tmp_path / "run"), verb)
    assert argv[0] == "python3"
    return subprocess.run(["/usr/bin/python3", *python_flags, *argv[1:]], input=input,
                          capture_output=True, env=env, timeout=60)


def test_a_launched_agent_reuses_its_bytecode_and_imports_only_what_the_verb_needs(tmp_path):
    """Started the way the orchestrator starts it (through the launcher, over SSH, where the
    environment may say PYTHONDONTWRITEBYTECODE), the second start of an agent compiles none of
    its modules, and a read verb loads neither runpy/zipimport, argparse, nor the planner."""
    path, digest = build_agent_pyz(tmp_path / "a")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    first = _launch(path, tmp_path, "info", env=env)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["agent_digest"] == digest
    again = _launch(path, tmp_path, "observe", "-v", env=env, input=b'{"digests": []}')
    assert again.returncode == 0, again.stderr
    loaded = [line for line in again.stderr.decode().splitlines() if "code object from" in line
              and "/runtime/" in line]
    assert loaded and all(".pyc'" in line for line in loaded), "\n".join(loaded)
    timed = _launch(path, tmp_path, "observe", "-X", "importtime", env=env, input=b'{"digests": []}')
    modules = {line.split("|")[-1].strip() for line in timed.stderr.decode().splitlines()
               if line.startswith("import time:")}
    assert "runtime.agent" in modules
    assert not modules & {"runpy", "zipfile", "argparse", "runtime.planner",
                          "runtime.reconcile", "runtime.admission", "site"}, sorted(modules)


def test_a_session_that_took_the_lock_loads_the_change_machinery_while_it_waits(tmp_path):
    """A change follows a lock: the session imports what apply needs (host, planner,
    executors, admission, gc) and opens its nftables context while the orchestrator ships and waits for earlier waves, so
    that later apply does not pay for it; a read-only session never loads it."""
    import sys
    from runtime.session import encode_request
    code = ("import sys, threading, time\n"
            "from runtime.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "[t.join(30) for t in threading.enumerate() if t is not threading.current_thread()]\n"
            "sys.stderr.write('LOADED=%d\\n' % ('runtime.executors' in sys.modules))\n"
            "nft = sys.modules.get('runtime.nftlib')\n"
            "sys.stderr.write('NFT=%d\\n' % bool(nft and nft._PROCESS and nft._PROCESS[0][1]))\n")
    root = ["--root", str(tmp_path / "r"), "--run", str(tmp_path / "run"), "session"]
    for verbs, loaded in ((["info", "status"], 0), (["info", "lock", "unlock"], 1)):
        stdin = b"".join(encode_request(v, {"holder": "t", "token": "t"}) for v in verbs)
        res = subprocess.run([sys.executable, "-c", code, *root], input=stdin, capture_output=True,
                             timeout=60, cwd=str(os.path.dirname(os.path.dirname(os.path.dirname(__file__)))))
        assert f"LOADED={loaded}".encode() in res.stderr, (verbs, res.stderr[-2000:])
        # and opened its nftables context (libnftables reads the ruleset into its cache on
        # first use: 2.5 ms a lab host's apply no longer pays)
        assert f"NFT={loaded}".encode() in res.stderr, (verbs, res.stderr[-2000:])
