"""Hostile images on a real lab host whose state directory is a small tmpfs: decompression
bombs are refused with the image and layer named, leave nothing behind, and the old release
keeps serving; a sparse file costs no disk; setuid files of an image give nothing to the
host's other users, while the container itself works."""
from __future__ import annotations

import pytest

from orchestrator.agent.bundle import build_agent_pyz
from runtime import protocol
from tests.runtime import hostile
from tests.runtime import imagekit as ik

TMPFS = "size=128m,nr_inodes=6000,mode=0700"


@pytest.fixture(scope="module")
def bomb_lab(tmp_path_factory):
    """One amd64 host of our own whose /var/lib/orch is a 128 MiB tmpfs with 6000 inodes."""
    from tests.conftest import own_lab
    with own_lab("bomb", amd64=1) as the_lab:
        host = the_lab.hosts[0]
        rc, _, err = the_lab.run(host, ["mount", "-t", "tmpfs", "-o", TMPFS, "tmpfs",
                                        "/var/lib/orch"])
        assert rc == 0, err
        pyz, _ = build_agent_pyz(tmp_path_factory.mktemp("agent"))
        yield the_lab, host, ik.lab_agent(the_lab, host, pyz)


@pytest.fixture(scope="module")
def base_layer(static_busybox):
    return ik.busybox_layer(str(static_busybox["linux/amd64"]), page=b"base\n")


def page(text: str) -> bytes:
    return ik.tar_bytes([ik.dir_entry("www"), ik.file_entry("www/index.html",
                                                            text.encode() + b"\n")])


def sh(lab, host, script: str) -> str:
    rc, out, err = lab.run(host, ["sh", "-c", script])
    assert rc == 0, err
    return out.decode()


def usage(lab, host) -> dict:
    """Used bytes and inodes of the state tmpfs, and what images/ holds."""
    used = sh(lab, host, "stat -f -c '%b %f %S %c %d' /var/lib/orch").split()
    blocks, free, size, inodes, ifree = map(int, used)
    images = sh(lab, host, "ls -a /var/lib/orch/images").split()
    return {"bytes": (blocks - free) * size, "inodes": inodes - ifree,
            "images": sorted(x for x in images if x not in (".", ".."))}


def deploy(agent, name, img, port=8080):
    agent.ship(img)
    return agent.apply({name: (img, ik.deploy_spec(port=port))})


def test_bombs_are_refused_named_and_leave_nothing(bomb_lab, base_layer, tmp_path):
    lab, host, agent = bomb_lab
    good = ik.make_image({"linux/amd64": [base_layer, page("good")]})
    rc, body = deploy(agent, "web", good)
    assert rc == 0 and body["services"]["web"]["ok"], body
    assert ik.hammer_get(host.address, 8080) == b"good\n"

    bombs = {
        # a small gzip of zeros: 1 GiB in 128 files of 8 MiB, each one fits, the sum does not
        "zeros": (hostile.zeros_bomb(1 << 30, files=128), "of the disk free", "zeros-"),
        # a 10 GB file that a plain tar stores as zeros: refused from its header
        "dense 10 GB": (hostile.zeros_bomb(10 << 30, name="big"), "of the disk free", "'big'"),
        # tens of thousands of empty files on a filesystem with 6000 inodes
        "empty files": (hostile.empty_files(30000), "inodes free", "'d"),
    }
    for what, (layer, words, entry) in bombs.items():
        assert len(layer) < 12 << 20, what
        img = ik.make_image({"linux/amd64": [base_layer, layer]},
                             diff_ids=lambda x: ik.digest(x) if x is layer else ik.diff_id(x))
        agent.ship(img)
        before = usage(lab, host)
        rc, body = agent.apply({"web": (img, ik.deploy_spec(port=8080))})
        res = body["services"]["web"]
        assert rc == protocol.EXIT_PARTIAL and not res["ok"], (what, body)
        err = res["error"]
        assert img.manifests["linux/amd64"] in err and ik.digest(layer) in err, (what, err)
        assert "layer 2/2" in err and words in err and entry in err, (what, err)
        assert ik.hammer_get(host.address, 8080) == b"good\n", what          # old one serves
        after = usage(lab, host)
        assert after["images"] == before["images"], what                      # nothing left
        assert after["bytes"] <= before["bytes"] + (1 << 20), (what, before, after)
        assert after["inodes"] <= before["inodes"] + 8, (what, before, after)
        rc, _ = agent.call("gc")
        assert rc == 0


def test_a_sparse_file_costs_no_disk(bomb_lab, base_layer, tmp_path):
    lab, host, agent = bomb_lab
    before = usage(lab, host)
    layer = hostile.sparse_layer(str(tmp_path / "src"), 10 << 30, [(0, b"head"),
                                                                   ((10 << 30) - 4, b"tail")],
                                 name="big")
    img = ik.make_image({"linux/amd64": [base_layer, layer, page("sparse")]})
    rc, body = deploy(agent, "web", img)
    assert rc == 0 and body["services"]["web"]["ok"], body
    assert ik.hammer_get(host.address, 8080) == b"sparse\n"
    hexd = protocol.split_digest(ik.diff_id(layer))          # the layer, unpacked once
    size, blocks = sh(lab, host, f"stat -c '%s %b' /var/lib/orch/layers/{hexd}/fs/big").split()
    assert int(size) == 10 << 30 and int(blocks) * 512 < 1 << 20
    assert usage(lab, host)["bytes"] < before["bytes"] + (8 << 20)


SUID_CMD = ["/bin/busybox", "sh", "-c",
            "trap 'exit 0' TERM; /bin/busybox httpd -f -p 8080 -h /www & wait"]


def test_setuid_files_of_an_image_give_nothing_to_other_users(bomb_lab, static_busybox):
    lab, host, agent = bomb_lab
    bb = open(static_busybox["linux/amd64"], "rb").read()
    layer = ik.tar_bytes([ik.dir_entry("bin"), ik.file_entry("bin/busybox", bb, 0o755),
                          ik.file_entry("bin/id", bb, 0o4755), ik.dir_entry("www"),
                          ik.file_entry("www/index.html", b"suid\n"), ik.dir_entry("etc"),
                          ik.file_entry("etc/passwd", b"root:x:0:0::/:/bin/sh\n"
                                        b"nobody:x:65534:65534::/:/bin/sh\n"),
                          ik.file_entry("etc/group", b"root:x:0:\nnogroup:x:65534:\n")])
    img = ik.make_image({"linux/amd64": [layer]}, cmd=SUID_CMD, user="nobody")
    agent.ship(img)
    spec = ik.deploy_spec(port=8086, health={"kind": "http", "path": "/", "port": 8080,
                                             "command": [], "interval": 0.5, "timeout": 0.5,
                                             "retries": 3, "start_period": 0.0})
    spec["ports"] = [{"host": 8086, "container": 8080, "protocol": "tcp"}]
    rc, body = agent.apply({"suid": (img, spec)})
    assert rc == 0 and body["services"]["suid"]["ok"], body
    assert ik.hammer_get(host.address, 8086) == b"suid\n"          # the container works
    hexd = protocol.split_digest(ik.diff_id(layer))                # its layer, unpacked once
    assert sh(lab, host, f"stat -c %a /var/lib/orch/layers/{hexd}/fs/bin/id").strip() == "4755"
    pid = sh(lab, host, "for d in /var/lib/orch/containers/*suid*; do "
                        "python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"pid\"])'"
                        " $d/meta.json; done").split()[0]
    paths = {"image": f"/var/lib/orch/layers/{hexd}/fs/bin/id",
             "container": sh(lab, host, "ls -d /var/lib/orch/containers/*suid*").split()[0]
             + "/rootfs/bin/id",
             "proc root": f"/proc/{pid}/root/bin/id"}
    for where, path in paths.items():
        rc, out, err = lab.run(host, ["setpriv", "--reuid=65534", "--regid=65534",
                                      "--clear-groups", "/bin/sh", "-c",
                                      'exec "$0" -u', path])
        # root-only dirs refuse the path; /proc/PID/root is reachable (the container's own
        # processes run as this uid) but a mount of another namespace never honours setuid
        assert out.strip() != b"0", (where, out, err)
        assert rc != 0 or out.strip() == b"65534", (where, rc, out, err)
    assert b"Permission denied" in lab.run(host, ["setpriv", "--reuid=65534", "--regid=65534",
                                                  "--clear-groups", "/bin/sh", "-c",
                                                  'exec "$0" -u', paths["image"]])[2]
    cdir = paths["container"][:-len("/rootfs/bin/id")]
    mount = [line for line in sh(lab, host, "cat /proc/self/mountinfo").splitlines()
             if line.split()[4] == cdir + "/rootfs"]
    assert mount and {"nosuid", "nodev"} <= set(mount[0].split()[5].split(",")), mount
    rc, body = agent.call("remove", "suid", "--who", "test")
    assert rc == 0, body
