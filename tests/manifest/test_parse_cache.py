"""A manifest parsed before is read back from the cache as the very trees the parser made (lines,
YInt sources, key order), without importing yaml; anything else is a miss that parses again."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.errors import ManifestError
from orchestrator.manifest import parse_cache, yaml_parse
from orchestrator.manifest.source import LList, LMap, YInt, parse_documents
from tests.conftest import REPO

TEXT = """\
vars: {n: 4, ratio: 0.5, on: true, none: null}
---
kind: Service   # a comment
name: web
image: {from: scratch, cmd: [/web, "--port", 8080]}
deploy:
  ports: ["80:8080"]
  mode: 0644
  anchors: &a {x: 1}
  again: *a
  1: an int key
"""


def same_tree(a, b):
    """Equal values, types, lines and YInt sources, all the way down."""
    assert type(a) is type(b), (a, b)
    if isinstance(a, LMap):
        assert (a.line, a.key_lines, list(a)) == (b.line, b.key_lines, list(b))
        for k in a:
            same_tree(a[k], b[k])
    elif isinstance(a, LList):
        assert (a.line, a.item_lines, len(a)) == (b.line, b.item_lines, len(b))
        for x, y in zip(a, b):
            same_tree(x, y)
    elif isinstance(a, YInt):
        assert (int(a), a.src) == (int(b), b.src)
    else:
        assert a == b


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCH_HOME", str(tmp_path / "home"))
    parse_cache.forget()            # what other tests' loads noted is not this test's
    yield tmp_path / "home"
    parse_cache.forget()


def test_a_parse_is_stored_and_read_back_as_the_same_trees(home, tmp_path):
    fresh = yaml_parse.parse(TEXT, "m.yaml")
    first = parse_documents(TEXT, str(tmp_path / "m.yaml"))          # parses, notes it
    assert not home.exists()                                       # written once loaded well
    parse_cache.flush()
    assert len(os.listdir(home / "cache" / "manifests")) == 1
    again = parse_documents(TEXT, str(tmp_path / "m.yaml"))          # reads the entry
    assert parse_cache.load(TEXT) is not None
    for (i, line, tree), d1, d2 in zip(fresh, first, again):
        assert (d1.index, d1.line) == (d2.index, d2.line) == (i, line)
        same_tree(tree, d1.data)
        same_tree(tree, d2.data)
    assert again[1].data["deploy"]["mode"].src == "0644" and again[1].data["deploy"][1] == "an int key"


@pytest.mark.parametrize("path", sorted(str(p) for p in (REPO / "manifests").rglob("*.yaml"))
                         + sorted(str(p) for p in (REPO / "examples").rglob("*.yaml")))
def test_every_shipped_manifest_round_trips(path, home):
    text = Path(path).read_text()
    fresh = yaml_parse.parse(text, path)
    parse_cache.save(text, fresh)
    parse_cache.flush()
    back = parse_cache.load(text)
    assert back is not None and len(back) == len(fresh)
    for (i, line, tree), (j, line2, tree2) in zip(fresh, back):
        assert (i, line) == (j, line2)
        same_tree(tree, tree2)


def test_a_value_json_would_change_is_not_cached(home):
    text = "when: 2001-12-14\nraw: !!binary aGVsbG8=\n"
    parsed = yaml_parse.parse(text, "t.yaml")
    parse_cache.save(text, parsed)
    parse_cache.flush()
    assert parse_cache.load(text) is None
    assert not (home / "cache" / "manifests").exists() or not os.listdir(home / "cache" / "manifests")


def test_an_error_is_never_cached_and_always_located(home, tmp_path):
    bad = "kind: Service\nname: [unclosed\n"
    for _ in range(2):
        with pytest.raises(ManifestError) as err:
            parse_documents(bad, str(tmp_path / "bad.yaml"))
        assert err.value.line is not None and "YAML syntax error" in str(err.value)
    assert parse_cache.load(bad) is None


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[[0, 1]]", b'[[0, 1, {"m": 1}]]',
                                     b'[[0, 1, {"m": 1, "k": [["a", 1]]}]]',
                                     b'[[0, 1, {"y": "1", "s": "1"}]]', b'[[0, 1, {"x": 1}]]',
                                     b'[[0, 1, {"m": 1, "k": [[[1], 1, 2]]}]]', b"[" * 100000])
def test_an_entry_that_is_not_what_the_cache_writes_is_a_miss_and_is_rewritten(home, tmp_path, garbage):
    parse_documents(TEXT, str(tmp_path / "m.yaml"))
    parse_cache.flush()
    (entry,) = (home / "cache" / "manifests").iterdir()
    entry.write_bytes(garbage)
    assert parse_cache.load(TEXT) is None
    docs = parse_documents(TEXT, str(tmp_path / "m.yaml"))
    same_tree(yaml_parse.parse(TEXT, "m.yaml")[1][2], docs[1].data)
    parse_cache.flush()
    assert parse_cache.load(TEXT) is not None


def test_the_key_changes_with_the_text_the_parser_and_yaml():
    k = parse_cache.key_of("a: 1\n", b"parser", "yaml:1:2")
    assert k != parse_cache.key_of("a: 2\n", b"parser", "yaml:1:2")
    assert k != parse_cache.key_of("a: 1\n", b"parser v2", "yaml:1:2")
    assert k != parse_cache.key_of("a: 1\n", b"parser", "yaml:1:3")


def test_the_cache_keeps_a_bounded_number_of_entries(home, monkeypatch):
    monkeypatch.setattr(parse_cache, "KEEP", 3)
    for n in range(6):
        text = f"n: {n}\n"
        parse_cache.save(text, yaml_parse.parse(text, "n.yaml"))
        parse_cache.flush()
    assert len(os.listdir(home / "cache" / "manifests")) == 3


def test_a_command_whose_manifests_did_not_change_does_not_import_yaml(home, tmp_path):
    (tmp_path / "m.yaml").write_text(TEXT)
    code = ("import sys\nfrom orchestrator.manifest.source import read_documents\n"
            "from orchestrator.manifest import parse_cache\n"
            "d = read_documents(sys.argv[1])\nparse_cache.flush()\n"
            "print(d[1].data['name'], 'yaml' in sys.modules)\n")
    env = dict(os.environ, ORCH_HOME=str(home))
    runs = [subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.yaml")], capture_output=True,
                           text=True, cwd=REPO, env=env) for _ in range(2)]
    assert [(p.returncode, p.stdout.strip()) for p in runs] == [(0, "web True"), (0, "web False")], runs


def test_manifests_that_do_not_load_write_no_entry(home, tmp_path):
    from orchestrator.manifest.loader import load_desired
    (tmp_path / "m.yaml").write_text("kind: Service\nname: web\nimage: {from: scratch, cmd: [/w]}\n"
                                     "deploy: {ports: [\"80\"]}\n")
    with pytest.raises(ManifestError, match="HOST:CONTAINER"):
        load_desired(str(tmp_path))
    assert not home.exists()
    (tmp_path / "m.yaml").write_text("kind: Service\nname: web\nimage: {from: scratch, cmd: [/w]}\n")
    load_desired(str(tmp_path))
    assert len(os.listdir(home / "cache" / "manifests")) == 1


def test_an_entry_beyond_the_parsers_limits_is_a_miss(home, monkeypatch):
    from orchestrator.manifest import source
    text = "a: 1\n"
    parse_cache.save(text, yaml_parse.parse(text, "a.yaml"))
    parse_cache.flush()
    (entry,) = (home / "cache" / "manifests").iterdir()
    deep = "1"
    for _ in range(source.MAX_DEPTH + 5):
        deep = '{"l": 1, "i": [[1, %s]]}' % deep
    for body in (deep, '"%s"' % ("x" * (source.MAX_SCALAR + 1)),
                 '{"l": 1, "i": [%s]}' % ", ".join(["[1, 1]"] * (source.MAX_VALUES + 1))):
        entry.write_text("[[0, 1, %s]]" % body)
        assert parse_cache.load(text) is None
    monkeypatch.setattr(parse_cache, "MAX_ENTRY", 10)
    entry.write_text('[[0, 1, "short enough to parse, not to read"]]')
    assert parse_cache.load(text) is None


def test_a_change_to_the_limits_is_a_miss(home, monkeypatch, tmp_path):
    text = "a: 1\n"
    parse_cache.save(text, yaml_parse.parse(text, "a.yaml"))
    parse_cache.flush()
    assert parse_cache.load(text) is not None
    real = open                                  # source.py as if its limits were edited

    def edited(path, *a, **kw):
        f = real(path, *a, **kw)
        if str(path).endswith("manifest/source.py") and "b" in (a[0] if a else kw.get("mode", "")):
            data = f.read().replace(b"MAX_DEPTH = 64", b"MAX_DEPTH = 3 ")
            f.close()
            import io
            return io.BytesIO(data)
        return f
    monkeypatch.setattr("builtins.open", edited)
    parse_cache._identity.cache_clear()         # read once per process: as a new command would
    assert parse_cache.load(text) is None
    parse_cache._identity.cache_clear()


def test_a_load_that_parsed_a_text_reads_it_back_before_it_is_written(home):
    text = "b: 2\n"
    parse_cache.forget()
    parse_cache.save(text, yaml_parse.parse(text, "b.yaml"))
    assert not home.exists() and parse_cache.load(text)[0][2]["b"] == 2
    parse_cache.forget()
