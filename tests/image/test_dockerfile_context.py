"""image: {dockerfile: ...} at load time: the context, .dockerignore, COPY sources, HEALTHCHECK, push:."""
import os

import pytest

from orchestrator.errors import ManifestError
from orchestrator.image.context import Ignore
from orchestrator.manifest import load_desired
from orchestrator.manifest.model import ContextCopyStep, RunStep, StageBase, StageCopyStep
from tests.image.conftest import write_tree

SERVICE = """\
kind: Service
name: web
image:
  dockerfile: Dockerfile
  platforms: [linux/amd64, linux/arm64]
{extra}
"""


def load(tmp_path, dockerfile, files=None, extra="", service=None):
    tree = {"orch.yaml": service or SERVICE.format(extra=extra), "Dockerfile": dockerfile}
    tree.update(files or {})
    return load_desired(write_tree(tmp_path / "m", tree), {})


@pytest.mark.parametrize("patterns, path, excluded", [
    (["*.pyc"], "a.pyc", True),
    (["*.pyc"], "sub/a.pyc", False),               # * does not cross directories
    (["**/*.pyc"], "sub/deep/a.pyc", True),
    (["**/*.pyc"], "a.pyc", True),
    (["secrets"], "secrets/key", True),            # a matching parent excludes its contents
    (["/build"], "build/x", True),
    (["docs", "!docs/keep.md"], "docs/keep.md", False),
    (["docs", "!docs/keep.md"], "docs/other.md", True),
    (["!a", "a"], "a", True),                      # the last match wins
    (["# comment", "", "  tmp  "], "tmp", True),
    (["te?t"], "test", True),
    (["[a-c].txt"], "b.txt", True),
    (["[!a-c].txt"], "b.txt", False),
    (["./x/../y"], "y", True),
])
def test_dockerignore(patterns, path, excluded):
    assert Ignore(patterns).excluded(path) is excluded


def test_copy_sources_are_resolved_with_dockerignore(tmp_path):
    desired = load(tmp_path, "FROM scratch\nWORKDIR /srv\nCOPY *.py app/ ./\nCOPY --chown=1000:1000 conf.ini /etc/\n", {
        "main.py": "m", "util.py": "u", "notes.txt": "n", "app/a.txt": "a", "app/cache/x.pyc": "c",
        "app/.env": "SECRET=1", "conf.ini": "c", ".dockerignore": "**/*.pyc\napp/.env\n"})
    steps = desired.services["web"].image.steps
    copy = [s for s in steps if isinstance(s, ContextCopyStep)]
    paths = sorted(p for _k, p, _s in copy[0].files)
    assert paths == ["/srv", "/srv/a.txt", "/srv/cache", "/srv/main.py", "/srv/util.py"]
    assert copy[0].label == "Dockerfile:3 COPY *.py app/ /srv/"          # no machine path in the history
    assert [(k, p) for k, p, _s in copy[1].files] == [("file", "/etc/conf.ini")] and copy[1].owner == "1000:1000"


@pytest.mark.parametrize("dockerfile, files, fragment, line", [
    ("FROM scratch\nCOPY ../outside /x\n", {}, "outside the build context", 2),
    ("FROM scratch\nCOPY missing.txt /x\n", {}, "no such file", 2),
    ("FROM scratch\n\nCOPY .env /x\n", {".env": "S=1", ".dockerignore": ".env\n"}, "excluded by .dockerignore", 3),
    ("FROM scratch\nCOPY *.none /x/\n", {}, "matches", 2),
    ("FROM scratch\nADD pack.tar.gz /x/\n", {"pack.tar.gz": b"\x1f\x8b\x08\x00rest"}, "archives", 2),
    ("FROM scratch\nCOPY link /x\n", {}, "outside the build context", 2),
])
def test_copy_refusals_name_the_dockerfile_line(tmp_path, dockerfile, files, fragment, line):
    if "link" in dockerfile:
        (tmp_path / "m").mkdir()
        os.symlink("/etc/passwd", tmp_path / "m" / "link")
    with pytest.raises(ManifestError) as err:
        load(tmp_path, dockerfile, files)
    assert err.value.line == line and err.value.file.endswith("Dockerfile"), str(err.value)
    assert fragment in str(err.value)


def test_healthcheck_becomes_the_deploy_health_unless_the_manifest_sets_one(tmp_path):
    df = "FROM scratch\nHEALTHCHECK --interval=2s --retries=4 CMD [\"/bin/check\", \"-q\"]\nCMD [\"/app\"]\n"
    health = load(tmp_path / "a", df).services["web"].deploy.health
    assert (health.kind, health.command, health.interval, health.retries) == ("exec", ("/bin/check", "-q"), 2.0, 4)
    own = load(tmp_path / "b", df, extra="deploy:\n  health: {tcp: 80}\n").services["web"].deploy.health
    assert (own.kind, own.port) == ("tcp", 80)


def test_stages_and_args_per_platform(tmp_path):
    df = ("ARG BASE=scratch\nFROM $BASE AS build\nARG TARGETARCH\nRUN [\"/bin/make\", \"$TARGETARCH\"]\n"
          "ENV ARCH=$TARGETARCH\nFROM build\nCOPY --from=build /out /out\n")
    image = load(tmp_path, df).services["web"].image
    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        build, final = image.dockerfile.stages[platform]
        run = build.steps[0]
        assert isinstance(run, RunStep) and run.env_only and dict(run.env) == {"TARGETARCH": arch}
        assert build.config.env["ARCH"] == arch
        assert final.base == StageBase("build") and isinstance(final.steps[0], StageCopyStep)


def test_build_args_nobody_reads_are_refused(tmp_path):
    with pytest.raises(ManifestError) as err:
        load(tmp_path, "FROM scratch\nARG MODE\n", extra="  args: {MODE: prod, MOOD: happy}\n")
    assert "declares no ARG MOOD" in str(err.value) and err.value.path[-2:] == ("args", "MOOD")


def test_dockerfile_keys_do_not_mix_with_yaml_steps(tmp_path):
    with pytest.raises(ManifestError, match='unknown key "steps"'):
        load(tmp_path, "FROM scratch\n", extra="  steps: []\n")


@pytest.mark.parametrize("push, ok", [("127.0.0.1:5000/team/web:1", True), ("registry.example/web", True),
                                      ("web:1", False), ("127.0.0.1:5000/web@sha256:" + "0" * 64, False)])
def test_push_reference(tmp_path, push, ok):
    service = SERVICE.format(extra="") + f"push: {push}\n"
    if ok:
        assert load(tmp_path, "FROM scratch\n", service=service).services["web"].push == push
    else:
        with pytest.raises(ManifestError, match="REGISTRY/REPO"):
            load(tmp_path, "FROM scratch\n", service=service)
