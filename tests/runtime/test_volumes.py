"""Volumes belong to their service unless shared; a legacy volume moves to its owner."""
import os

from runtime import volumes
from runtime.layout import Layout


def test_owned_shared_and_legacy_volumes(tmp_path):
    layout = Layout(str(tmp_path / "root"), str(tmp_path / "run"))
    os.makedirs(layout.volumes)
    web = volumes.ensure_volume(layout, "web", "data", shared=False)
    api = volumes.ensure_volume(layout, "api", "data", shared=False)
    assert web != api                                   # same name, two services: two volumes
    media_a = volumes.ensure_volume(layout, "web", "media", shared=True)
    assert media_a == volumes.ensure_volume(layout, "api", "media", shared=True)
    legacy = os.path.join(layout.volumes, "old")
    os.makedirs(legacy)
    with open(os.path.join(legacy, "keep"), "w") as f:
        f.write("x" * 5000)
    moved = volumes.ensure_volume(layout, "db", "old", shared=False)
    assert not os.path.exists(legacy) and open(os.path.join(moved, "keep")).read() == "x" * 5000
    rows = {(r["service"], r["name"]): r for r in volumes.list_volumes(layout)}
    assert set(rows) == {("web", "data"), ("api", "data"), (None, "media"), ("db", "old")}
    assert rows[("db", "old")]["bytes"] >= 5000
