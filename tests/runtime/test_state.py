"""State files carry a schema version; files written by the previous agent are read, migrated,
and written back only by verbs that change the host."""
import json
import os
import subprocess
import sys

import pytest

from runtime import protocol
from runtime.errors import NewerState
from runtime.layout import Layout
from runtime.spec import Target
from runtime.state import SCHEMA_FILE, State, disk_schema
from tests.runtime.imagekit import REPO, deploy_spec

IDX, MAN = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def write_v1_state(root):
    """The files as protocol 1's agent (runtime/state.py before schema.json) wrote them: plain
    json.dump of the dicts, no version anywhere. Its deploy specs could leave keys out, and
    that agent read a missing drain as 0.0 (today's default is 2.0)."""
    state = root / "state"
    state.mkdir(parents=True)
    old_spec = deploy_spec()
    del old_spec["drain"], old_spec["keep_releases"]
    target = {"web": {"release": "r-0123456789abcdef", "index": IDX, "manifest": MAN,
                      "deploy": old_spec}}
    status = {"current": {"web": {"release": "r-0123456789abcdef", "slot": "b", "since": 1700000000.5}},
              "healthy": ["a1b2c3d4e5f6"], "settled": ["a1b2c3d4e5f6"], "failed": {},
              "restarts": {"web/b": [1, 1700000001.0]}, "history": {"web": ["r-fedcba9876543210"]},
              "ipam": 7}
    releases = {"web": {"r-0123456789abcdef": target["web"],
                        "r-fedcba9876543210": dict(target["web"], release="r-fedcba9876543210")}}
    for name, data in (("target.json", target), ("status.json", status), ("releases.json", releases)):
        (state / name).write_text(json.dumps(data, indent=None, sort_keys=True))
    return state


def test_a_v1_state_is_read_with_v1_meaning(tmp_path):
    state_dir = write_v1_state(tmp_path)
    st = State(Layout(str(tmp_path), str(tmp_path / "run")))
    assert disk_schema(str(state_dir)) == 1
    t = Target.from_json("web", st.target()["web"])
    assert t.deploy.drain == 0.0 and t.deploy.keep_releases == 3     # as the v1 agent read them
    assert st.status()["current"]["web"]["slot"] == "b" and st.status()["ipam"] == 7
    old = st.records()["web"]["r-fedcba9876543210"]
    assert old["deploy"]["drain"] == 0.0
    assert not (state_dir / SCHEMA_FILE).exists()                   # reading wrote nothing


def test_upgrade_writes_the_current_schema_once(tmp_path):
    state_dir = write_v1_state(tmp_path)
    st = State(Layout(str(tmp_path), str(tmp_path / "run")))
    before = st.target()
    assert st.upgrade() == 1
    assert json.loads((state_dir / SCHEMA_FILE).read_text()) == {"schema": protocol.STATE_SCHEMA}
    on_disk = json.loads((state_dir / "target.json").read_text())
    assert on_disk == before and on_disk["web"]["deploy"]["drain"] == 0.0
    assert st.upgrade() == protocol.STATE_SCHEMA and st.target() == before


def test_a_fresh_host_starts_at_the_current_schema(tmp_path):
    st = State(Layout(str(tmp_path), str(tmp_path / "run")))
    os.makedirs(st.dir)
    assert disk_schema(st.dir) == protocol.STATE_SCHEMA and st.target() == {}


def test_a_newer_state_is_refused_not_misread(tmp_path):
    state_dir = write_v1_state(tmp_path)
    (state_dir / SCHEMA_FILE).write_text(json.dumps({"schema": protocol.STATE_SCHEMA + 1}))
    st = State(Layout(str(tmp_path), str(tmp_path / "run")))
    with pytest.raises(NewerState, match="written by a newer agent"):
        st.target()
    with pytest.raises(NewerState):
        st.upgrade()


def test_the_status_verb_reads_a_v1_state_and_writes_nothing(tmp_path):
    state_dir = write_v1_state(tmp_path)
    before = {p.name: p.read_bytes() for p in state_dir.iterdir()}
    res = subprocess.run([sys.executable, "-m", "runtime", "--root", str(tmp_path),
                          "--run", str(tmp_path / "run"), "status"], capture_output=True,
                         cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO), timeout=60)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert body["services"]["web"]["slot"] == "b" and body["services"]["web"]["state"] == "missing"
    assert {p.name: p.read_bytes() for p in state_dir.iterdir()} == before
