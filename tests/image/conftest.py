"""Fixtures for builder tests: a private ORCH_HOME, manifest writing, a loopback registry."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request

import pytest

from orchestrator.image.store import Store


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A private ORCH_HOME; returns its Store (layout at $ORCH_HOME/store)."""
    h = tmp_path / "orch-home"
    monkeypatch.setenv("ORCH_HOME", str(h))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return Store(str(h / "store"))


def write_tree(root, files):
    """Write {relative path: text or bytes} under root; returns root as str."""
    for name, content in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(textwrap.dedent(content))
    return str(root)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_registry(root, port, extra=""):
    """Run Debian's docker-registry on 127.0.0.1:PORT until the generator is closed."""
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    config = root / "config.yml"
    config.write_text(textwrap.dedent(f"""\
        version: 0.1
        log: {{level: error}}
        storage: {{filesystem: {{rootdirectory: {root / 'data'}}}, delete: {{enabled: true}}}}
        http: {{addr: 127.0.0.1:{port}}}
        """) + extra)
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=1).read()
                break
            except urllib.error.HTTPError as exc:
                if exc.code == 401:          # up, and asking for credentials
                    break
                raise
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("docker-registry did not start: " + (root / "registry.log").read_text())
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@pytest.fixture(scope="session")
def registry(tmp_path_factory):
    """Debian's docker-registry serving on loopback; yields "127.0.0.1:PORT"."""
    yield from _serve_registry(tmp_path_factory.mktemp("registry"), free_port())


AUTH_USER, AUTH_PASSWORD = "orch-tester", "correct horse battery"


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory):
    """docker-registry with htpasswd (bcrypt) authentication; yields "127.0.0.1:PORT".

    The user is AUTH_USER with AUTH_PASSWORD; the file is made by htpasswd (apache2-utils)."""
    root = tmp_path_factory.mktemp("auth-registry")
    line = subprocess.run(["htpasswd", "-nbB", AUTH_USER, AUTH_PASSWORD], check=True, capture_output=True,
                          text=True).stdout.strip()
    (root / "htpasswd").write_text(line + "\n")
    extra = f"auth: {{htpasswd: {{realm: orch-test, path: {root / 'htpasswd'}}}}}\n"
    yield from _serve_registry(root, free_port(), extra)


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="session")
def debian_home(tmp_path_factory):
    """A session ORCH_HOME shared by the tests that need debian bases (mmdebstrap runs once per arch)."""
    return str(tmp_path_factory.mktemp("debian-home"))


@pytest.fixture(scope="session")
def hello(debian_home, tmp_path_factory):
    """The default service (manifests/, copied with its lock) built for amd64 + arm64."""
    from orchestrator.image import build_services
    from orchestrator.manifest import load_desired
    src = tmp_path_factory.mktemp("hello") / "manifests"
    shutil.copytree(os.path.join(REPO, "manifests"), src)
    store = Store(os.path.join(debian_home, "store"))
    events = []
    built = build_services(load_desired(str(src), {}), store, progress=events.append)["hello"]
    return {"dir": str(src), "store": store, "built": built, "events": events}


def copy_lock(hello_dir, target_dir):
    lock = os.path.join(hello_dir, "orch.lock")
    if os.path.exists(lock):
        shutil.copy(lock, os.path.join(str(target_dir), "orch.lock"))
