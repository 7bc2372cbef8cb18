"""Small, deterministic OCI test images built in Python (busybox-static inside), and a thin
driver for the agent CLI. Used by the runtime tests and bench/swap.py."""
from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import tarfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

HTTPD_CMD = ["/bin/busybox", "sh", "-c",
             "trap 'exit 0' TERM; /bin/busybox httpd -f -p 80 -h /www & wait"]


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tar_bytes(entries: Sequence[Tuple[tarfile.TarInfo, Optional[bytes]]], gz: bool = True
              ) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for info, data in entries:
            info.mtime = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    raw = buf.getvalue()
    if not gz:
        return raw
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0, compresslevel=6) as g:
        g.write(raw)
    return out.getvalue()


def file_entry(name: str, data: bytes, mode: int = 0o644) -> Tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mode = mode
    return ti, data


def dir_entry(name: str, mode: int = 0o755):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mode = mode
    return ti, None


def link_entry(name: str, target: str, hard: bool = False):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE
    ti.linkname = target
    return ti, None


def busybox_layer(busybox_path: str = "/bin/busybox", page: bytes = b"hello\n",
                  extra: Sequence[Tuple[tarfile.TarInfo, Optional[bytes]]] = ()) -> bytes:
    with open(busybox_path, "rb") as f:
        bb = f.read()
    return tar_bytes([dir_entry("bin"), file_entry("bin/busybox", bb, 0o755),
                      link_entry("bin/sh", "busybox"), dir_entry("www"),
                      file_entry("www/index.html", page), dir_entry("etc"),
                      file_entry("etc/passwd", b"root:x:0:0:root:/:/bin/sh\n"
                                 b"nobody:x:65534:65534:nobody:/:/bin/sh\n"),
                      file_entry("etc/group", b"root:x:0:\nnogroup:x:65534:\n"),
                      *extra])


@dataclass
class Image:
    blobs: Dict[str, bytes]
    index: str
    manifests: Dict[str, str]   # platform -> manifest digest


def diff_id(layer: bytes) -> str:
    return digest(gzip.decompress(layer)) if layer[:2] == b"\x1f\x8b" else digest(layer)


def make_image(layers_by_platform: Dict[str, List[bytes]], cmd: Sequence[str] = HTTPD_CMD,
               env: Sequence[str] = (), user: str = "", diff_ids=diff_id) -> Image:
    """``diff_ids``: layer -> its diff_id (hostile tests pass a cheap one for bombs: the
    agent does not read them)."""
    blobs: Dict[str, bytes] = {}
    manifests = {}
    index_entries = []
    for plat in sorted(layers_by_platform):
        os_, arch, *variant = plat.split("/")
        layers = layers_by_platform[plat]
        config = {"architecture": arch, "os": os_,
                  "config": {"Cmd": list(cmd), "Env": list(env), "User": user},
                  "rootfs": {"type": "layers", "diff_ids": [diff_ids(x) for x in layers]}}
        if variant:
            config["variant"] = variant[0]
        cfg = json.dumps(config, sort_keys=True).encode()
        blobs[digest(cfg)] = cfg
        for x in layers:
            blobs[digest(x)] = x
        manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                               "digest": digest(cfg), "size": len(cfg)},
                    "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"
                                if x[:2] == b"\x1f\x8b" else
                                "application/vnd.oci.image.layer.v1.tar",
                                "digest": digest(x), "size": len(x)} for x in layers]}
        mb = json.dumps(manifest, sort_keys=True).encode()
        blobs[digest(mb)] = mb
        manifests[plat] = digest(mb)
        p = {"os": os_, "architecture": arch}
        if variant:
            p["variant"] = variant[0]
        index_entries.append({"mediaType": manifest["mediaType"], "digest": digest(mb),
                              "size": len(mb), "platform": p})
    index = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
             "manifests": index_entries}
    ib = json.dumps(index, sort_keys=True).encode()
    blobs[digest(ib)] = ib
    return Image(blobs=blobs, index=digest(ib), manifests=manifests)


def receive_stream(blobs: Dict[str, bytes]) -> bytes:
    out = b""
    for d in sorted(blobs):
        data = blobs[d]
        out += json.dumps({"digest": d, "size": len(data), "offset": 0}).encode() + b"\n" + data
    return out


def deploy_spec(port: int = 8080, **over) -> dict:
    spec = {"ports": [{"host": port, "container": 80, "protocol": "tcp"}],
            "health": {"kind": "http", "path": "/", "port": 80, "command": [],
                       "interval": 0.5, "timeout": 0.5, "retries": 3, "start_period": 0.0},
            "env": {}, "volumes": [], "secrets": [],
            "resources": {"memory": 64 << 20, "pids": 64, "cpus": None},
            "drain": 0.0, "monitor": 0.0, "stop_timeout": 2.0, "stop_first": False,
            "keep_releases": 3}
    spec.update(over)
    return spec


def hammer_get(address: str, port: int, timeout: float = 2.0, path: str = "/") -> bytes:
    """One HTTP GET on a fresh connection; returns the body (raises OSError on any failure)."""
    import socket
    with socket.create_connection((address, port), timeout=timeout) as s:
        s.settimeout(timeout)
        s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0]:
        raise OSError(f"bad answer: {head[:80]!r}")
    return body


class Hammer:
    """A client loop in a thread: new connection per request, counts ok and failed."""

    def __init__(self, address: str, port: int):
        import threading
        self.address, self.port = address, port
        self.ok = 0
        self.failed: List[str] = []
        self.bodies: Dict[bytes, int] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                body = hammer_get(self.address, self.port)
                self.ok += 1
                self.bodies[body] = self.bodies.get(body, 0) + 1
            except OSError as exc:
                self.failed.append(str(exc))

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(10)


def local_runner(netns: Optional[str] = None):
    def run(argv: List[str], input: bytes, timeout: float):
        base = ["nsenter", f"--net=/run/netns/{netns}"] if netns else []
        env = dict(os.environ, PYTHONPATH=REPO)
        p = subprocess.run(base + argv, input=input, capture_output=True, timeout=timeout,
                           env=env, cwd=REPO)
        return p.returncode, p.stdout, p.stderr
    return run


TEST_AGENT = "/var/lib/orch/agent/test-agent.pyz"


def lab_agent(lab, host, pyz: str) -> "Agent":
    """The agent ``pyz`` put on a lab host, run there over SSH as ``python3 TEST_AGENT``."""
    lab.run(host, ["mkdir", "-p", "/var/lib/orch/agent"])
    lab.put(host, pyz, TEST_AGENT)
    return Agent(lambda argv, input, timeout: lab.run(host, argv, input, timeout),
                 ["python3", TEST_AGENT])


class Agent:
    """Runs agent verbs through ``runner(argv, input, timeout) -> (rc, out, err)``: locally
    (optionally in a network namespace) or on a lab host over SSH."""

    def __init__(self, runner, prog: Sequence[str], root: Optional[str] = None,
                 run: Optional[str] = None):
        self.runner = runner
        self.prog = list(prog)
        self.opts = (["--root", root] if root else []) + (["--run", run] if run else [])

    def argv(self, verb: str, *args: str) -> List[str]:
        return self.prog + self.opts + [verb] + list(args)

    def call(self, verb: str, *args: str, req=None, data: Optional[bytes] = None,
             timeout: float = 120, lock: bool = True) -> Tuple[int, dict]:
        """A mutating verb (apply, rollback, remove, gc) runs under the deploy lock, taken
        for this call and released after it (``lock=False``: sent without a token)."""
        from runtime import protocol
        if lock and verb in protocol.MUTATING and data is None:
            token = "test-" + os.urandom(8).hex()
            rc, body = self.call("lock", req={"holder": "imagekit", "token": token, "ttl": 600})
            if rc:
                return rc, body
            try:
                return self.call(verb, *args, req=dict(req or {}, lock=token), timeout=timeout,
                                 lock=False)
            finally:
                self.call("unlock", req={"token": token})
        stdin = data if data is not None else (json.dumps(req).encode() if req is not None
                                               else b"")
        rc, out, err = self.runner(self.argv(verb, *args), stdin, timeout)
        try:
            body = json.loads(out.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            body = {"raw": out.decode(errors="replace")}
        if rc:
            body["stderr"] = err.decode(errors="replace")[-2000:]
        return rc, body

    def ship(self, image: Image) -> dict:
        rc, body = self.call("receive", data=receive_stream(image.blobs))
        assert rc == 0, body
        return body

    def apply(self, services: Dict[str, Tuple[Image, dict]], who: str = "test",
              secrets: Optional[Dict[str, Dict[str, str]]] = None, wait: bool = True,
              ) -> Tuple[int, dict]:
        from runtime import protocol
        req = {"who": who, "wait": wait, "services": {
            name: {"release": protocol.release_id(img.index, spec), "index": img.index,
                   "deploy": spec, "secrets": (secrets or {}).get(name, {})}
            for name, (img, spec) in services.items()}}
        return self.call("apply", req=req)
