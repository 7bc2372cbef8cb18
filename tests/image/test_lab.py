"""The arm64 image's binary runs on an arm64 lab host (qemu-user via binfmt), the amd64 one on amd64."""

import pytest

from orchestrator.image.sandbox import unpack_layers

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("platform,machine", [("linux/arm64", b"aarch64"), ("linux/amd64", b"x86_64")])
def test_image_binary_runs_on_a_host_of_its_platform(lab, hello, tmp_path, platform, machine):
    store, built = hello["store"], hello["built"]
    rootfs = tmp_path / "rootfs"
    unpack_layers(store, store.read_json(built.manifests[platform])["layers"], str(rootfs))
    busybox = rootfs / "bin" / "busybox"
    head = busybox.read_bytes()[:20]
    assert head[:4] == b"\x7fELF" and head[18:20] == {b"aarch64": b"\xb7\x00", b"x86_64": b"\x3e\x00"}[machine]
    host = lab.by_platform(platform)[0]
    folder = f"/var/lib/orch/test-build-{platform.replace('/', '-')}"
    remote = f"{folder}/busybox"                       # busybox picks its applet from argv[0]
    assert lab.run(host, ["mkdir", "-p", folder])[0] == 0
    lab.put(host, busybox, remote, mode=0o755)
    rc, out, err = lab.run(host, [remote, "uname", "-m"])
    assert rc == 0, err
    assert out.strip() == machine                      # the arm64 binary, on its arm host, says aarch64
    rc, out, _ = lab.run(host, [remote, "cat", "/etc/orch/platform"])
    if platform != "linux/amd64":
        assert out.strip().decode() == platform
    lab.run(host, ["rm", "-rf", folder])
