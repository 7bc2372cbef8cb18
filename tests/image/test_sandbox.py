"""run steps: executed in a runc sandbox at build time, through qemu-user for foreign platforms."""
import gzip
import io
import os
import tarfile

from orchestrator.image import build_services
from orchestrator.image.sandbox import SANDBOX_MOUNTPOINTS, host_platform
from orchestrator.manifest import load_desired
from tests.image.conftest import copy_lock, write_tree

RUN = """\
kind: Service
name: r
image:
  from: {debian: bookworm, packages: [busybox-static]}
  platforms: [linux/amd64, linux/arm64]
  steps:
    - run: [/bin/busybox, sh, -c, "mkdir -p /out && /bin/busybox uname -m > /out/arch && echo $GREETING > /out/env && rm -r /usr/share/doc && echo junk > /tmp/junk"]
      env: {GREETING: hello-from-run}
"""


def test_run_step_output_is_the_layer_on_each_platform(hello, tmp_path):
    src = write_tree(tmp_path / "m", {"r.yaml": RUN})
    copy_lock(hello["dir"], src)
    events = []
    built = build_services(load_desired(src, {}), hello["store"], progress=events.append)["r"]
    store = hello["store"]
    for platform, machine in (("linux/amd64", b"x86_64\n"), ("linux/arm64", b"aarch64\n")):
        image = built.images[platform]
        assert (image.cached, image.built) == (1, 1)                  # the base came from the cache
        top = image.layers[-1]["digest"]
        tar = tarfile.open(fileobj=io.BytesIO(gzip.decompress(store.read_bytes(top))))
        names = set(tar.getnames())
        assert tar.extractfile("out/arch").read() == machine          # really ran as that architecture
        assert tar.extractfile("out/env").read() == b"hello-from-run\n"
        assert "usr/share/.wh.doc" in names                           # deletion -> OCI whiteout
        assert not any(n.split("/")[0] in SANDBOX_MOUNTPOINTS for n in names)
    emulated = {e.platform for e in events if e.state == "emulated"}
    assert emulated == {p for p in ("linux/amd64", "linux/arm64") if p != host_platform()}
    assert all("qemu-user" in e.label and "slower" in e.label for e in events if e.state == "emulated")
    # a second build reuses the run layers
    again = build_services(load_desired(src, {}), store)["r"]
    assert again.index_digest == built.index_digest and all(i.built == 0 for i in again.images.values())
    assert not os.listdir(os.path.join(os.path.dirname(store.root), "work")) if os.path.isdir(
        os.path.join(os.path.dirname(store.root), "work")) else True


def test_failing_run_step_is_a_build_error_with_output(hello, tmp_path):
    import pytest
    from orchestrator.errors import BuildError
    text = RUN.replace("platforms: [linux/amd64, linux/arm64]", "platforms: [linux/amd64]").replace(
        '"mkdir -p /out', '"echo broken-step >&2; exit 7; mkdir -p /out')
    src = write_tree(tmp_path / "m", {"r.yaml": text})
    copy_lock(hello["dir"], src)
    with pytest.raises(BuildError, match=r"exit 7(.|\n)*broken-step"):
        build_services(load_desired(src, {}), hello["store"])
