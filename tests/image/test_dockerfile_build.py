"""Dockerfile builds through the real builder: a registry base, RUN in runc (qemu for arm64), multi-stage."""
import gzip
import os
import shutil
import subprocess
import tarfile

import pytest

from orchestrator.image import build_services
from orchestrator.image.sandbox import unpack_layers
from orchestrator.image.store import Store
from orchestrator.manifest import load_desired
from tests.image.conftest import write_tree

MANIFEST = """\
kind: Service
name: multi
image:
  dockerfile: Dockerfile
  platforms: [linux/amd64, linux/arm64]
"""

DOCKERFILE = """\
FROM {base} AS build
SHELL ["/bin/busybox", "sh", "-c"]
ARG TARGETARCH
WORKDIR /build
RUN echo "generated for $TARGETARCH" > artifact.txt && echo "build only" > junk.txt

FROM {base}
COPY --from=build /build/artifact.txt /srv/www/
COPY --chmod=0600 note.txt /srv/
ENV MODE=multi
CMD ["/bin/busybox", "httpd", "-f", "-p", "80", "-h", "/srv/www"]
"""


@pytest.fixture(scope="session")
def busybox_ref(hello, registry, tmp_path_factory):
    """The default service's busybox image, pushed to the loopback registry."""
    layout = str(tmp_path_factory.mktemp("busybox-layout"))
    hello["store"].export_layout(layout, {"hello": hello["built"].index_digest})
    ref = f"{registry}/orch-test/busybox:1"
    subprocess.run(["skopeo", "copy", "-q", "--all", "--dest-tls-verify=false", f"oci:{layout}:hello",
                    f"docker://{ref}"], check=True)
    return ref


def members(store, digest):
    with store.open_blob(digest) as raw, tarfile.open(fileobj=gzip.GzipFile(fileobj=raw)) as tar:
        return {m.name: m for m in tar.getmembers()}


def test_multi_stage_image_has_only_what_the_final_stage_copies(tmp_path, home, busybox_ref):
    src = write_tree(tmp_path / "m", {"orch.yaml": MANIFEST, "Dockerfile": DOCKERFILE.format(base=busybox_ref),
                                      "note.txt": "private\n"})
    built = build_services(load_desired(src, {}), home)["multi"]
    for platform, arch in (("linux/amd64", "amd64"), ("linux/arm64", "arm64")):
        manifest = home.read_json(built.manifests[platform])
        config = home.read_json(manifest["config"]["digest"])
        base_layers = len(config["history"]) - 2
        own = [members(home, layer["digest"]) for layer in manifest["layers"][base_layers:]]
        assert list(own[0]) == ["srv/www/artifact.txt"]                   # one file from the build stage
        assert own[1]["srv/note.txt"].mode == 0o600
        every = {name for layer in manifest["layers"] for name in members(home, layer["digest"])}
        assert not any(name.startswith("build") for name in every), sorted(every)
        root = tmp_path / f"root-{arch}"
        unpack_layers(home, manifest["layers"], str(root))
        assert (root / "srv/www/artifact.txt").read_text() == f"generated for {arch}\n"
        assert not (root / "build").exists()
        assert config["config"]["Cmd"][:2] == ["/bin/busybox", "httpd"] and "MODE=multi" in config["config"]["Env"]
        assert config["architecture"] == arch
    elsewhere = tmp_path / "elsewhere" / "project"
    shutil.copytree(src, elsewhere)
    again = build_services(load_desired(str(elsewhere), {}), Store(str(tmp_path / "fresh" / "store")),
                           cache_dir=str(tmp_path / "fresh" / "cache"))["multi"]
    assert again.index_digest == built.index_digest           # rebuilt from nothing, elsewhere: same bytes


def test_final_stage_from_a_build_stage_keeps_its_layers_and_env(tmp_path, home, busybox_ref):
    dockerfile = (f"FROM {busybox_ref} AS base\nENV STAGE=base\nWORKDIR /data\n"
                  "FROM base\nSHELL [\"/bin/busybox\", \"sh\", \"-c\"]\nRUN echo \"$STAGE\" > here.txt\n")
    src = write_tree(tmp_path / "m", {"orch.yaml": MANIFEST, "Dockerfile": dockerfile})
    built = build_services(load_desired(src, {}), home, platforms=["linux/amd64"])["multi"]
    manifest = home.read_json(built.manifests["linux/amd64"])
    config = home.read_json(manifest["config"]["digest"])
    assert config["config"]["WorkingDir"] == "/data" and "STAGE=base" in config["config"]["Env"]
    root = tmp_path / "root"
    unpack_layers(home, manifest["layers"], str(root))
    assert (root / "data/here.txt").read_text() == "base\n"
    assert os.path.isdir(root / "srv/www")                               # the base's files are there
