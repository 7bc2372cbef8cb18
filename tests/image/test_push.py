"""`orch push`: an image index to a real registry (Debian's docker-registry) with and without auth."""
import base64
import json
import subprocess

import pytest

from orchestrator import cli
from orchestrator.commands.push import split_ref_dir
from orchestrator.image.push import PushError, Target, docker_config_auth, push_index
from tests.image.conftest import AUTH_PASSWORD, AUTH_USER

CREDS = {"ORCH_REGISTRY_USERNAME": AUTH_USER, "ORCH_REGISTRY_PASSWORD": AUTH_PASSWORD}


def skopeo_inspect(ref, *extra, creds=None):
    argv = ["skopeo", "inspect", "--tls-verify=false", *extra]
    if creds:
        argv += ["--creds", f"{creds[0]}:{creds[1]}"]
    out = subprocess.run(argv + [f"docker://{ref}"], capture_output=True, check=True).stdout
    return out


def blob_count(store, index_digest):
    return len({d for m in store.manifests_of(index_digest).values() for d, _ in store.blobs_for(m)[1:]})


# ---------------------------------------------------------------- pure parts

@pytest.mark.parametrize("ref, host, repo, tag", [
    ("127.0.0.1:5000/demo/uwsgi:1", "127.0.0.1:5000", "demo/uwsgi", "1"),
    ("registry.example/web", "registry.example", "web", "latest"),
    ("localhost/a/b/c:v1.2", "localhost", "a/b/c", "v1.2"),
])
def test_target(ref, host, repo, tag):
    assert Target.parse(ref) == Target(host, repo, tag)


@pytest.mark.parametrize("ref", ["web:1", "127.0.0.1:5000/Web", "127.0.0.1:5000/web@sha256:" + "0" * 64, ""])
def test_target_refused(ref):
    with pytest.raises(PushError, match="REGISTRY/REPO"):
        Target.parse(ref)


def auth(user, password):
    return base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize("config, host, expected", [
    ({"auths": {"reg.example:5000": {"auth": auth("u", "p:w")}}}, "reg.example:5000", ("u", "p:w")),
    ({"auths": {"https://reg.example/v1/": {"auth": auth("u", "p")}}}, "reg.example", ("u", "p")),
    ({"auths": {"https://index.docker.io/v1/": {"auth": auth("u", "p")}}}, "registry-1.docker.io", ("u", "p")),
    ({"auths": {"reg.example": {"username": "u", "password": "p"}}}, "reg.example", ("u", "p")),
    ({"auths": {"other.example": {"auth": auth("u", "p")}}}, "reg.example", None),
    ({}, "reg.example", None),
])
def test_docker_config_auth(config, host, expected):
    assert docker_config_auth(config, host) == expected


@pytest.mark.parametrize("config, fragment", [
    ({"credHelpers": {"reg.example": "ecr-login"}}, "credential helper"),
    ({"auths": {"reg.example": {}}, "credsStore": "desktop"}, "credential helper"),
    ({"auths": {"reg.example": {"identitytoken": "x"}}}, "identity token"),
])
def test_docker_config_what_orch_cannot_use_is_said(config, fragment):
    with pytest.raises(PushError, match=fragment) as err:
        docker_config_auth(config, "reg.example")
    assert "ORCH_REGISTRY_USERNAME" in str(err.value)


@pytest.mark.parametrize("ref, directory, out", [
    ("127.0.0.1:5000/x:1", "manifests", ("127.0.0.1:5000/x:1", "manifests")),
    ("examples", "manifests", (None, "examples")),              # an existing directory, not a reference
    ("127.0.0.1:5000/x", "examples", ("127.0.0.1:5000/x", "examples")),
    (None, "examples", (None, "examples")),
])
def test_split_ref_dir(ref, directory, out, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "examples").mkdir()
    assert split_ref_dir(ref, directory) == out


# ---------------------------------------------------------------- against docker-registry

def test_push_with_basic_auth_then_nothing_to_send(hello, auth_registry):
    store, index = hello["store"], hello["built"].index_digest
    ref = f"{auth_registry}/orch-test/hello:1"
    first = push_index(store, index, ref, environ=CREDS)
    total = blob_count(store, index)
    assert (first.blobs, first.sent, first.manifests) == (total, total, 2)
    raw = skopeo_inspect(ref, "--raw", creds=(AUTH_USER, AUTH_PASSWORD))
    assert "sha256:" + __import__("hashlib").sha256(raw).hexdigest() == index       # the same index, byte for byte
    arm = json.loads(skopeo_inspect(ref, "--override-arch", "arm64", creds=(AUTH_USER, AUTH_PASSWORD)))
    arm_manifest = store.read_json(hello["built"].manifests["linux/arm64"])
    assert arm["Architecture"] == "arm64" and arm["Layers"] == [l["digest"] for l in arm_manifest["layers"]]
    second = push_index(store, index, ref, environ=CREDS)
    assert (second.blobs, second.sent, second.bytes_sent) == (total, 0, 0)


def test_wrong_password_is_refused_clearly(hello, auth_registry):
    with pytest.raises(PushError) as err:
        push_index(hello["store"], hello["built"].index_digest, f"{auth_registry}/orch-test/hello:2",
                   environ={"ORCH_REGISTRY_USERNAME": AUTH_USER, "ORCH_REGISTRY_PASSWORD": "hunter2-x9"})
    assert f"refused the credentials of user {AUTH_USER!r}" in str(err.value) and "hunter2-x9" not in str(err.value)
    with pytest.raises(PushError, match="wants credentials"):
        push_index(hello["store"], hello["built"].index_digest, f"{auth_registry}/orch-test/hello:2",
                   environ={"DOCKER_CONFIG": "/nonexistent"})


def test_credentials_from_docker_config(hello, auth_registry, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(
        {"auths": {auth_registry: {"auth": auth(AUTH_USER, AUTH_PASSWORD)}}}))
    report = push_index(hello["store"], hello["built"].index_digest, f"{auth_registry}/orch-test/other:1",
                        environ={"DOCKER_CONFIG": str(tmp_path)})
    assert report.sent == report.blobs                                   # another repository: all blobs
    skopeo_inspect(f"{auth_registry}/orch-test/other:1", "--raw", creds=(AUTH_USER, AUTH_PASSWORD))


def test_chunked_upload(hello, registry):
    store, index = hello["store"], hello["built"].index_digest
    ref = f"{registry}/orch-test/chunked:1"
    report = push_index(store, index, ref, chunk=64 << 10, environ={"DOCKER_CONFIG": "/nonexistent"})
    assert report.chunked >= 1 and report.sent == report.blobs
    big = max((d for m in store.manifests_of(index).values() for d, s in store.blobs_for(m)[2:]),
              key=store.size)
    out = subprocess.run(["skopeo", "copy", "-q", "--src-tls-verify=false", "--override-arch", "amd64",
                          f"docker://{ref}", f"dir:{hello['dir']}-pulled"], capture_output=True, check=True)
    assert out.returncode == 0
    with open(f"{hello['dir']}-pulled/{big.split(':')[1]}", "rb") as fh:
        assert fh.read() == store.read_bytes(big)


def test_cli_push_uses_the_service_push_key(hello, registry, home, tmp_path, capsys, monkeypatch):
    import shutil
    project = tmp_path / "project"
    shutil.copytree(hello["dir"], project)
    text = (project / "hello.yaml").read_text()
    (project / "hello.yaml").write_text(text + f"push: {registry}/orch-test/cli:1\n")
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path / "no-docker"))
    assert cli.main(["push", "hello", str(project), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["target"] == f"{registry}/orch-test/cli:1" and out["manifests"] == 2
    assert cli.main(["push", "hello", f"{registry}/orch-test/cli:2", str(project), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sent"] == 0               # same repository: blobs are there


# ---------------------------------------------------------------- Bearer tokens

class TokenGate:
    """A token service in front of the loopback registry, as Docker Hub or GHCR do it: /v2/ answers
    401 with a Bearer challenge; /token trades Basic credentials for a token; requests that carry
    the token are passed to the real registry (Location headers rewritten to come back here)."""

    def __init__(self, backend, user, password):
        import http.server
        import secrets
        import threading
        import urllib.request
        gate = self
        self.token = secrets.token_hex(8)
        self.scopes = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code, headers, body=b""):
                self.send_response(code)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def handle_one(self):
                if self.path.startswith("/token"):
                    from urllib.parse import parse_qs, urlsplit
                    gate.scopes.append(parse_qs(urlsplit(self.path).query).get("scope", [""])[0])
                    want = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
                    if self.headers.get("Authorization") != want:
                        return self._send(401, [])
                    return self._send(200, [("Content-Type", "application/json")],
                                      json.dumps({"token": gate.token}).encode())
                if self.headers.get("Authorization") != f"Bearer {gate.token}":
                    realm = f"http://{gate.address}/token"
                    return self._send(401, [("WWW-Authenticate",
                                             f'Bearer realm="{realm}",service="gate",scope="repository:x:pull"')])
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                req = urllib.request.Request(f"http://{backend}{self.path}", data=body, method=self.command)
                for k in ("Content-Type", "Content-Range", "Accept"):
                    if self.headers.get(k):
                        req.add_header(k, self.headers[k])
                try:
                    resp = urllib.request.urlopen(req, timeout=30)
                except urllib.error.HTTPError as exc:
                    resp = exc
                headers = [(k, v.replace(f"http://{backend}", f"http://{gate.address}"))
                           for k, v in resp.headers.items() if k.lower() not in ("content-length", "connection")]
                return self._send(resp.status if hasattr(resp, "status") else resp.code, headers, resp.read())

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = handle_one

        import urllib.error  # noqa: F401 - used in the handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_push_with_a_bearer_token(hello, registry):
    gate = TokenGate(registry, "bearer-user", "bearer-pass")
    try:
        ref = f"{gate.address}/orch-test/bearer:1"
        report = push_index(hello["store"], hello["built"].index_digest, ref, chunk=64 << 10,
                            environ={"ORCH_REGISTRY_USERNAME": "bearer-user", "ORCH_REGISTRY_PASSWORD": "bearer-pass"})
        assert report.sent == report.blobs and report.chunked >= 1
        assert gate.scopes[0] == "repository:orch-test/bearer:pull,push"
        raw = skopeo_inspect(f"{registry}/orch-test/bearer:1", "--raw")
        assert json.loads(raw)["manifests"][0]["digest"] == hello["built"].manifests["linux/amd64"]
        with pytest.raises(PushError, match="refused the credentials"):
            push_index(hello["store"], hello["built"].index_digest, ref,
                       environ={"ORCH_REGISTRY_USERNAME": "bearer-user", "ORCH_REGISTRY_PASSWORD": "nope-77"})
    finally:
        gate.close()
