"""The content store: verified blobs, blobs_for, names in index.json, standalone export."""
import json

import pytest

from orchestrator.errors import BuildError
from orchestrator.image.store import MT_INDEX, Store


def image(store):
    cfg_d, cfg_s = store.put_json({"architecture": "amd64", "os": "linux"})
    layer = store.put_bytes(b"layer-bytes")
    man = {"schemaVersion": 2, "config": {"digest": cfg_d, "size": cfg_s},
           "layers": [{"digest": layer, "size": 11}]}
    man_d, man_s = store.put_json(man)
    idx_d, _ = store.put_json({"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [
        {"digest": man_d, "size": man_s, "platform": {"os": "linux", "architecture": "amd64"}}]})
    return idx_d, man_d, cfg_d, layer


def test_blobs_for_lists_manifest_config_layers(tmp_path):
    s = Store(str(tmp_path / "s")).ensure()
    idx, man, cfg, layer = image(s)
    assert [d for d, _ in s.blobs_for(man)] == [man, cfg, layer]
    assert all(size == s.size(d) for d, size in s.blobs_for(man))
    assert s.manifests_of(idx) == {"linux/amd64": man}
    assert [d for d, _ in s.blobs_for_index(idx)] == [idx, man, cfg, layer]
    assert s.blob_path(layer).endswith(layer.split(":")[1])


def test_put_verifies_digest(tmp_path):
    s = Store(str(tmp_path / "s")).ensure()
    with pytest.raises(BuildError, match="digest mismatch"):
        s.put_bytes(b"abc", expected="sha256:" + "0" * 64)
    import io
    with pytest.raises(BuildError, match="digest mismatch"):
        s.put_stream(io.BytesIO(b"abc"), expected="sha256:" + "0" * 64)
    assert list((tmp_path / "s" / ".tmp").iterdir()) == []          # nothing half-written stays
    assert list((tmp_path / "s" / "blobs" / "sha256").iterdir()) == []


def test_tags_and_export(tmp_path):
    s = Store(str(tmp_path / "s")).ensure()
    idx, man, cfg, layer = image(s)
    s.tag("web", idx)
    s.tag("web", idx)
    assert s.tags() == {"web": idx} and s.resolve("web") == idx
    s.export_layout(str(tmp_path / "out"), {"web": idx})
    out = json.loads((tmp_path / "out" / "index.json").read_text())
    assert [m["annotations"]["org.opencontainers.image.ref.name"] for m in out["manifests"]] == ["web"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert Store(str(tmp_path / "out")).has(layer)
