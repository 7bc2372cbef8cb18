"""load_desired: the whole manifest schema, located errors, vars, and the agent deploy spec."""
import os
import textwrap

import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import (DebianBase, HostSelector, OciBase, RegistryBase, RunStep, ScratchBase,
                                   load_desired)

FULL = """\
kind: Fleet
name: pis
hosts:
  - {name: pi-kitchen, address: 192.168.1.20, user: pi, labels: {role: web}, platform: linux/arm64}
  - {name: pi-garage, address: 192.168.1.21, port: 2222, platform: linux/arm/v7}
---
vars:
  tag: v1
kind: Service
name: web
image:
  from: {debian: bookworm, packages: [python3-minimal, busybox-static]}
  platforms: [linux/arm64, linux/arm/v7]
  steps:
    - copy: {src: app, dest: /app, mode: "0644", owner: "1000:1000"}
    - template: {src: conf.j2, dest: /etc/app.conf}
    - run: [/bin/busybox, true]
      env: {A: b}
    - run: echo hi
  env: {MODE: prod, N: 3}
  entrypoint: [/usr/bin/python3]
  cmd: [/app/main.py]
  workdir: /app
  user: "1000"
  labels: {version: "{{ tag }}"}
  expose: [8000, "53/udp"]
  stop_signal: SIGINT
deploy:
  hosts: {labels: {role: web}}
  ports: ["8080:8000", "5353:53/udp"]
  health: {http: /healthz, port: 8000, interval: 500ms, timeout: 2s, retries: 5, start_period: 1m}
  env: {DEBUG: false, WORKERS: 2}
  volumes: ["data:/data", "cache:/var/cache/app:ro"]
  secrets:
    db_password: {env: DB_PASSWORD}
    api_key: {file: api.key, dest: /etc/app/key}
  resources: {memory: 128M, pids: 256, cpus: 0.5}
  drain: 3s
  stop_timeout: 20s
  stop_first: true
  keep_releases: 5
  strategy: {canary: 1, max_parallel: "25%", monitor: 10s, on_failure: rollback}
"""


def write(tmp_path, files):
    for name, text in files.items():
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text) if isinstance(text, str) else text)
    return str(tmp_path)


@pytest.fixture
def full(tmp_path):
    return write(tmp_path, {"m.yaml": FULL, "app/main.py": "print(1)\n", "conf.j2": "tag={{ tag }} svc={{ service }}\n"})


def test_full_manifest_model(full):
    d = load_desired(full, {})
    assert d.fleet.name == "pis" and not d.fleet.is_lab
    kitchen, garage = d.fleet.hosts
    assert (kitchen.user, kitchen.port, dict(kitchen.labels), kitchen.platform) == ("pi", 22, {"role": "web"}, "linux/arm64")
    assert (garage.user, garage.port) == ("root", 2222)
    web = d.services["web"]
    img = web.image
    assert img.base == DebianBase("bookworm", ("busybox-static", "python3-minimal"))
    assert img.platforms == ("linux/arm64", "linux/arm/v7")
    copy, tmpl, run1, run2 = img.steps
    assert (copy.dest, copy.mode, copy.owner) == ("/app", 0o644, (1000, 1000))
    assert copy.path == os.path.join(os.path.realpath(full), "app")
    assert tmpl.content == b"tag=v1 svc=web\n"
    assert run1 == RunStep(("/bin/busybox", "true"), env=run1.env) and dict(run1.env) == {"A": "b"}
    assert run2.command == ("/bin/sh", "-c", "echo hi")
    c = img.config
    assert dict(c.env) == {"MODE": "prod", "N": "3"} and dict(c.labels) == {"version": "v1"}
    assert c.expose == ("8000/tcp", "53/udp") and c.stop_signal == "SIGINT" and c.workdir == "/app"
    dep = web.deploy
    assert dep.hosts == HostSelector(kind="labels", labels=dep.hosts.labels)
    assert dep.hosts.matches("pi-kitchen", {"role": "web"}) and not dep.hosts.matches("x", {})
    assert dep.strategy.max_parallel_percent == 25.0 and dep.strategy.wave_size(8) == 2
    assert dep.secrets[1].file == os.path.join(full, "api.key")


def test_agent_json_is_exactly_the_contract(full):
    spec = load_desired(full, {}).services["web"].deploy.to_agent_json()
    assert spec == {
        "ports": [{"host": 8080, "container": 8000, "protocol": "tcp"},
                  {"host": 5353, "container": 53, "protocol": "udp"}],
        "health": {"kind": "http", "path": "/healthz", "port": 8000, "command": [], "interval": 0.5,
                   "timeout": 2.0, "retries": 5, "start_period": 60.0},
        "env": {"DEBUG": "false", "WORKERS": "2"},
        "volumes": [{"name": "data", "dest": "/data", "readonly": False},
                    {"name": "cache", "dest": "/var/cache/app", "readonly": True}],
        "secrets": [{"name": "db_password", "dest": "/run/secrets/db_password"},
                    {"name": "api_key", "dest": "/etc/app/key"}],
        "resources": {"memory": 134217728, "pids": 256, "cpus": 0.5},
        "drain": 3.0, "monitor": 10.0, "stop_timeout": 20.0, "stop_first": True, "keep_releases": 5,
    }


def test_secret_values_never_in_spec(full, tmp_path):
    (tmp_path / "api.key").write_text("s3cr3t-file")
    dep = load_desired(full, {}).services["web"].deploy
    values = dep.read_secrets({"DB_PASSWORD": "s3cr3t-env"})
    assert values == {"db_password": b"s3cr3t-env", "api_key": b"s3cr3t-file"}
    assert "s3cr3t" not in repr(dep.to_agent_json())
    with pytest.raises(ManifestError, match="DB_PASSWORD is not set"):
        dep.read_secrets({})


def test_defaults_and_default_fleet(tmp_path):
    d = load_desired(write(tmp_path, {"s.yaml": "kind: Service\nname: s\nimage: {from: scratch}\n"}), {})
    assert d.fleet.is_lab and (d.fleet.lab.amd64, d.fleet.lab.arm64, d.fleet.lab.armv7) == (2, 1, 0)
    s = d.services["s"]
    assert s.image.base == ScratchBase() and s.image.platforms == ("linux/amd64", "linux/arm64")
    spec = s.deploy.to_agent_json()
    assert spec["health"]["kind"] == "none" and spec["ports"] == [] and spec["keep_releases"] == 3
    assert spec["resources"] == {"memory": None, "pids": None, "cpus": None}
    assert (spec["drain"], spec["stop_timeout"], spec["monitor"], spec["stop_first"]) == (2.0, 10.0, 0.0, False)


def test_health_kinds(tmp_path):
    text = """\
    kind: Service
    name: a
    image: {from: scratch}
    deploy: {ports: ["80:8080"], health: {http: /}}
    ---
    kind: Service
    name: b
    image: {from: scratch}
    deploy: {health: {tcp: 5432}}
    ---
    kind: Service
    name: c
    image: {from: scratch}
    deploy: {health: {exec: [pg_isready, -q], interval: 2s}}
    """
    d = load_desired(write(tmp_path, {"m.yaml": text}), {})
    h = {n: s.deploy.to_agent_json()["health"] for n, s in d.services.items()}
    assert (h["a"]["kind"], h["a"]["port"], h["a"]["path"]) == ("http", 8080, "/")
    assert (h["b"]["kind"], h["b"]["port"], h["b"]["path"], h["b"]["command"]) == ("tcp", 5432, None, [])
    assert (h["c"]["kind"], h["c"]["command"], h["c"]["interval"]) == ("exec", ["pg_isready", "-q"], 2.0)


def test_vars_cli_overrides_and_templated_numbers(tmp_path):
    text = """\
    vars: {port: 8080, canary: 1}
    kind: Service
    name: web
    image: {from: scratch}
    deploy:
      ports: ["{{ port }}:80"]
      strategy: {canary: "{{ canary }}"}
    """
    d = load_desired(write(tmp_path, {"m.yaml": text}), {"port": "9090", "canary": "2"})
    dep = d.services["web"].deploy
    assert dep.ports[0].host == 9090 and dep.strategy.canary == 2


def test_bases(tmp_path):
    (tmp_path / "layout").mkdir()
    (tmp_path / "layout" / "index.json").write_text("{}")
    text = """\
    kind: Service
    name: a
    image: {from: {oci: "layout:v1"}}
    ---
    kind: Service
    name: b
    image: {from: {registry: "127.0.0.1:5000/library/busybox:1.36"}}
    """
    d = load_desired(write(tmp_path, {"m.yaml": text}), {})
    assert d.services["a"].image.base == OciBase(dir=str(tmp_path / "layout"), tag="v1")
    assert d.services["b"].image.base == RegistryBase(ref="127.0.0.1:5000/library/busybox:1.36")


# What the agent would refuse on the host (runtime/spec.py) is refused at load time, located.
SERVICE_NAME_RULE = ("expected a service name of a-z, 0-9 and '-' (at most 40 characters, "
                     "starting with a letter or digit), ")
SVC = "kind: Service\nname: web\nimage:\n  from: scratch\n"

# (files, expected error text): each must fail with exactly this located message
INVALID = [
    ({"m.yaml": "kind: Servce\nname: web\n"},
     'm.yaml:1 kind: unknown kind "Servce" (did you mean "Service"?)'),
    ({"m.yaml": "name: web\n"}, 'm.yaml:1: missing key "kind" (Fleet or Service)'),
    ({"m.yaml": SVC + "deploy:\n  ports: ['80']\n"},
     'm.yaml:6 services/web/deploy/ports/0: expected "HOST:CONTAINER", got "80"'),
    ({"m.yaml": SVC + "deploy:\n  prots: ['80:80']\n"},
     'm.yaml:6 services/web/deploy/prots: unknown key "prots" (did you mean "ports"?)'),
    ({"m.yaml": SVC + "  steps:\n    - copy: {src: app/, dest: /app}\n"},
     'm.yaml:6 services/web/image/steps/0/copy/src: no such file "app/"'),
    ({"m.yaml": SVC + "  steps:\n    - copy: {src: ../x, dest: /app}\n"},
     'm.yaml:6 services/web/image/steps/0/copy/src: source "../x" escapes the manifest directory ("..")'),
    ({"m.yaml": SVC + "  steps:\n    - copy: {src: /etc/passwd, dest: /p}\n"},
     'm.yaml:6 services/web/image/steps/0/copy/src: absolute source "/etc/passwd" refused: sources are relative to the manifest directory'),
    ({"m.yaml": SVC + "  steps:\n    - copi: {src: a, dest: /a}\n"},
     'm.yaml:6 services/web/image/steps/0/copi: unknown key "copi" (did you mean "copy"?)'),
    ({"m.yaml": SVC + "  steps:\n    - template: {src: t.j2, dest: /t}\n", "t.j2": "{{ nope }}"},
     "m.yaml:6 services/web/image/steps/0/template/src: t.j2: undefined variable: 'nope' is undefined"),
    ({"m.yaml": SVC + "  cmd: ['{{ missing }}']\n"},
     "m.yaml:5 services/web/image/cmd/0: undefined variable: 'missing' is undefined"),
    ({"m.yaml": SVC + "  platforms: [linux/arm64/v8]\n"},
     'm.yaml:5 services/web/image/platforms/0: unsupported platform "linux/arm64/v8" (did you mean "linux/arm64"?)'),
    ({"m.yaml": SVC + "deploy:\n  health: {http: /, interval: 1 sec}\n"},
     'm.yaml:6 services/web/deploy/health: missing "port" (and no published port to default to)'),
    ({"m.yaml": SVC + "deploy:\n  health: {tcp: 80, interval: soon}\n"},
     'm.yaml:6 services/web/deploy/health/interval: expected a duration like 1s or 500ms, got "soon"'),
    ({"m.yaml": SVC + "deploy:\n  resources: {memory: lots}\n"},
     'm.yaml:6 services/web/deploy/resources/memory: expected a size like 128M or 1G, got "lots"'),
    ({"m.yaml": SVC + "deploy:\n  strategy: {on_failure: rolback}\n"},
     'm.yaml:6 services/web/deploy/strategy/on_failure: expected halt or rollback, got "rolback" (did you mean "rollback"?)'),
    ({"m.yaml": SVC + "deploy:\n  strategy: {max_parallel: 0}\n"},
     'm.yaml:6 services/web/deploy/strategy/max_parallel: expected a number of hosts >= 1 or a percentage like "25%", got "0"'),
    ({"m.yaml": SVC + "deploy:\n  volumes: [data]\n"},
     'm.yaml:6 services/web/deploy/volumes/0: expected "NAME:/PATH[:ro][,shared]", got "data"'),
    ({"m.yaml": SVC + "deploy:\n  secrets: {pw: {vault: x}}\n"},
     'm.yaml:6 services/web/deploy/secrets/pw/vault: unknown key "vault" (allowed keys: env, file, dest, tmpfs)'),
    ({"m.yaml": SVC + "deploy:\n  keep_releases: two\n"},
     'm.yaml:6 services/web/deploy/keep_releases: expected an integer, got "two"'),
    ({"m.yaml": SVC + "deploy:\n  stop_first: yes please\n"},
     'm.yaml:6 services/web/deploy/stop_first: expected true or false, got "yes please"'),
    ({"m.yaml": SVC + "deploy:\n  hosts: [pi-kitchn]\n---\nkind: Fleet\nname: f\nhosts: [{name: pi-kitchen, address: 10.0.0.1}]\n"},
     'm.yaml:6 services/web/deploy/hosts/0: no host "pi-kitchn" in fleet "f" (did you mean "pi-kitchen"?)'),
    ({"m.yaml": "kind: Fleet\nname: f\nlab: {hosts: 1, arm_64: 1}\n"},
     'm.yaml:3 fleet/f/lab/arm_64: unknown key "arm_64" (did you mean "arm64"?)'),
    ({"m.yaml": "kind: Fleet\nname: f\nlab: {hosts: 1}\nhosts: []\n"},
     'm.yaml:1 fleet/f: expected exactly one of "lab" or "hosts", got lab, hosts'),
    ({"m.yaml": SVC + "  from: scratch\n"}, 'm.yaml:5: duplicate key "from" (first on line 4)'),
    ({"m.yaml": SVC + "  steps: [\n"}, "m.yaml:6: YAML syntax error: ..."),
    ({"m.yaml": SVC + "---\n" + SVC}, 'm.yaml:6 services/web: service defined twice (first at m.yaml:1)'),
    ({"m.yaml": SVC + "imgae: {}\n"},
     'm.yaml:5 services/web/imgae: unknown key "imgae" (did you mean "image"?)'),
    ({"m.yaml": SVC.replace("image:\n  from: scratch\n", "")},
     'm.yaml:1 services/web: missing required key "image"'),
    ({"m.yaml": "kind: Service\nname: Web!\nimage: {from: scratch}\n"},
     "m.yaml:2 services/name: " + SERVICE_NAME_RULE + "got 'Web!'"),
    ({"m.yaml": "kind: Service\nname: w\nimage: {from: {debian: bookworm, packages: [Busybox]}}\n"},
     'm.yaml:3 services/w/image/from/packages/0: expected a Debian package name, got "Busybox"'),
    ({"m.yaml": "kind: Service\nname: w\nimage: {from: {oci: nowhere}}\n"},
     'm.yaml:3 services/w/image/from/oci: no OCI image layout at "nowhere" (no index.json)'),
    ({"m.yaml": "kind: Service\nname: w\nimage: {from: {registry: busybox}}\n"},
     'm.yaml:3 services/w/image/from/registry: expected a reference like "registry.example:5000/name:tag", got "busybox"'),
    ({"a.yaml": SVC + "deploy: {ports: ['80:80']}\n", "b.yaml": SVC.replace("web", "api") + "deploy: {ports: ['80:81']}\n"},
     'b.yaml:1 services/api/deploy/ports/0: host port 80/tcp is already published by service "web" (a.yaml)'),
]


AGENT_REFUSALS = [
    ({"m.yaml": "kind: Fleet\nname: f\nlab: {hosts: 201}\n"},       # the lab's own limit (was 32 here)
     "m.yaml:3 fleet/f/lab: --hosts 201: expected 0..200"),
    ({"m.yaml": "kind: Fleet\nname: my_lab\nlab: {hosts: 1}\n"},
     "m.yaml:3 fleet/my_lab/lab: lab name 'my_lab': use 1-24 lowercase letters, digits or '-', starting with a letter"),
    ({"m.yaml": SVC.replace("web", "my_app")}, "m.yaml:2 services/name: " + SERVICE_NAME_RULE + "got 'my_app'"),
    ({"m.yaml": SVC.replace("web", "my.app")}, "m.yaml:2 services/name: " + SERVICE_NAME_RULE + "got 'my.app'"),
    ({"m.yaml": SVC.replace("web", "a" * 41)}, "m.yaml:2 services/name: " + SERVICE_NAME_RULE + f"got '{'a' * 41}'"),
    ({"m.yaml": SVC.replace("web", "b" * 63)}, "m.yaml:2 services/name: " + SERVICE_NAME_RULE + f"got '{'b' * 63}'"),
    ({"m.yaml": SVC + "deploy:\n  resources:\n    cpus: .nan\n"},
     "m.yaml:7 services/web/deploy/resources/cpus: expected a number of CPUs > 0 and at most 1024, got nan"),
    ({"m.yaml": SVC + "deploy:\n  resources: {memory: 1}\n"},
     "m.yaml:6 services/web/deploy/resources/memory: expected at least 6 MiB (6291456 bytes), got 1"),
    ({"m.yaml": SVC + "deploy:\n  volumes:\n    - data:/data\n    - sys:/proc/sys\n"},
     "m.yaml:8 services/web/deploy/volumes/1/dest: /proc/sys is inside /proc, which the runtime mounts "
     "itself (a mount there could reach the host's kernel settings)"),
    ({"m.yaml": SVC + "deploy:\n  secrets:\n    key: {env: K, dest: /sys/kernel/x}\n"},
     "m.yaml:7 services/web/deploy/secrets/key/dest: /sys/kernel/x is inside /sys, which the runtime mounts "
     "itself (a mount there could reach the host's kernel settings)"),
    ({"m.yaml": SVC + "deploy:\n  drain: 2h\n"},
     "m.yaml:6 services/web/deploy/drain: expected seconds between 0 and 3600, got 7200.0"),
    ({"m.yaml": SVC + "deploy:\n  strategy: {monitor: 2h}\n"},
     "m.yaml:6 services/web/deploy/strategy/monitor: expected seconds between 0 and 3600, got 7200.0"),
]
INVALID += AGENT_REFUSALS


def test_what_the_loader_accepts_the_agent_accepts(full):
    """The agent parses the JSON the loader renders to the same spec (one shape, one set of
    defaults)."""
    from runtime.spec import Deploy
    for svc in load_desired(full, {}).services.values():
        js = svc.deploy.to_agent_json()
        assert Deploy.from_json(js) == svc.deploy.agent_spec()
        assert Deploy.from_json(js).to_json() == js


@pytest.mark.parametrize("files,expected", INVALID, ids=[e[1][:60] for e in INVALID])
def test_invalid_manifests_give_located_errors(tmp_path, monkeypatch, files, expected):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, files)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(ManifestError) as info:
        load_desired(str(tmp_path), {})
    if expected.endswith("..."):
        assert str(info.value).startswith(expected[:-3])
    else:
        assert str(info.value) == expected
    assert sorted(os.listdir(tmp_path)) == before     # bad input writes nothing


def test_symlink_out_of_directory_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "leak").symlink_to("/etc/shadow")
    (tmp_path / "link").symlink_to("/etc")
    write(tmp_path, {"m.yaml": SVC + "  steps:\n    - copy: {src: app, dest: /app}\n"})
    with pytest.raises(ManifestError, match=r'"app/leak" is a symlink to "/etc/shadow", outside'):
        load_desired(str(tmp_path), {})
    write(tmp_path, {"m.yaml": SVC + "  steps:\n    - copy: {src: link/passwd, dest: /p}\n"})
    with pytest.raises(ManifestError, match=r'escapes the manifest directory \(symlink'):
        load_desired(str(tmp_path), {})


def test_default_manifests_load():
    here = os.path.dirname(__file__)
    d = load_desired(os.path.join(here, "..", "..", "manifests"), {})
    hello = d.services["hello"]
    assert hello.image.platforms == ("linux/amd64", "linux/arm64")
    assert hello.deploy.strategy.canary == 1 and hello.deploy.ports[0].host == 8080


def test_init_is_on_by_default_and_can_be_turned_off(tmp_path):
    svc = "kind: Service\nname: s\nimage: {from: scratch}\n"
    on = load_desired(write(tmp_path / "a", {"s.yaml": svc}), {}).services["s"].deploy
    off = load_desired(write(tmp_path / "b", {"s.yaml": svc + "deploy: {init: false}\n"}), {}).services["s"].deploy
    assert on.init is True and "init" not in on.to_agent_json()      # release ids stay as they were
    assert off.init is False and off.to_agent_json()["init"] is False
    with pytest.raises(ManifestError, match=r"s.yaml:4 services/s/deploy/init: expected true or false"):
        load_desired(write(tmp_path / "c", {"s.yaml": svc + "deploy: {init: maybe}\n"}), {})
