"""Dockerfile step layers without a sandbox: owners from the image's passwd, root-confined paths, entries."""
import os

import pytest

from orchestrator.errors import BuildError
from orchestrator.image.dockersteps import (context_entries, mkdir_entries, owner_ids, resolve_in_root,
                                            stage_entries)
from orchestrator.manifest.model import ContextCopyStep, MkdirStep, StageCopyStep

PASSWD = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n" \
         "app:x:1000:1001::/home/app:/bin/sh\n"
GROUP = "root:x:0:\nwww-data:x:33:\nstaff:x:50:\napp:x:1001:\n"


@pytest.mark.parametrize("spec, ids", [
    ("www-data", (33, 33)),
    ("www-data:staff", (33, 50)),
    ("app", (1000, 1001)),                 # the user's own group from passwd
    ("1000", (1000, 1001)),
    ("4242", (4242, 4242)),                # a number nobody has: its own group number
    ("4242:7", (4242, 7)),
    ("root:www-data", (0, 33)),
])
def test_owner_ids(spec, ids):
    assert owner_ids(spec, PASSWD, GROUP) == ids


@pytest.mark.parametrize("spec, fragment", [("nobody", "user 'nobody'"), ("app:wheel", "group 'wheel'")])
def test_owner_ids_unknown_names(spec, fragment):
    with pytest.raises(BuildError, match=fragment):
        owner_ids(spec, PASSWD, GROUP)


def test_resolve_in_root_never_leaves_the_root(tmp_path):
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "passwd").write_text(PASSWD)
    os.symlink("/etc", root / "abs")                     # absolute: inside the root, not the host's /etc
    os.symlink("../../../../etc/passwd", root / "up")
    os.symlink("loop", root / "loop")
    assert resolve_in_root(str(root), "/abs/passwd") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/up") == str(root / "etc" / "passwd")
    assert resolve_in_root(str(root), "/../../etc/passwd") == str(root / "etc" / "passwd")
    with pytest.raises(BuildError, match="too many symlinks"):
        resolve_in_root(str(root), "/loop")


def test_context_entries_normalise_modes_and_add_parents(tmp_path):
    run = tmp_path / "run.sh"
    run.write_text("#!/bin/sh\n")
    run.chmod(0o700)
    conf = tmp_path / "app.conf"
    conf.write_text("x")
    conf.chmod(0o600)
    step = ContextCopyStep(label="t", files=(("dir", "/opt/app", ""), ("file", "/opt/app/run.sh", str(run)),
                                             ("file", "/opt/app/app.conf", str(conf)),
                                             ("symlink", "/opt/app/current", "run.sh")))
    entries = {e.path: e for e in context_entries(step, {"opt"}, 33, 33)}
    assert list(entries) == ["opt/app", "opt/app/run.sh", "opt/app/app.conf", "opt/app/current"]
    assert entries["opt/app/run.sh"].mode == 0o755 and entries["opt/app/app.conf"].mode == 0o644
    assert {(e.uid, e.gid) for e in entries.values()} == {(33, 33)}
    chmod = ContextCopyStep(label="t", files=(("file", "/a/b/c", str(conf)),), mode=0o640)
    got = context_entries(chmod, set(), 0, 0)
    assert [(e.path, e.type, e.mode) for e in got] == [("a", "dir", 0o755), ("a/b", "dir", 0o755),
                                                       ("a/b/c", "file", 0o640)]


def test_mkdir_entries_only_when_missing():
    assert mkdir_entries(MkdirStep("t", "/srv/app"), {"srv", "srv/app"}) == []
    assert [e.path for e in mkdir_entries(MkdirStep("t", "/srv/app"), {"srv"})] == ["srv/app"]


def test_stage_entries_globs_and_missing_sources(tmp_path):
    root = tmp_path / "stage"
    (root / "out" / "sub").mkdir(parents=True)
    for name in ("a.bin", "b.bin", "c.txt", "sub/d.bin"):
        (root / "out" / name).write_text(name)
    step = StageCopyStep(label="Dockerfile:9 COPY", stage="build", sources=("/out/*.bin",), dest="/dst/")
    assert sorted(e.path for e in stage_entries(step, str(root), {"dst"}, 0, 0)) == ["dst/a.bin", "dst/b.bin"]
    whole = StageCopyStep(label="t", stage="build", sources=("/out",), dest="/copy")
    assert "copy/sub/d.bin" in {e.path for e in stage_entries(whole, str(root), set(), 0, 0)}
    with pytest.raises(BuildError, match="Dockerfile:9 COPY: /nope does not exist in stage 'build'"):
        stage_entries(StageCopyStep(label="Dockerfile:9 COPY", stage="build", sources=("/nope",), dest="/x"),
                      str(root), set(), 0, 0)
