"""The small value languages of manifests, table-driven."""
import pytest

from orchestrator.manifest.units import (normalise_dest, parse_duration, parse_mode, parse_owner,
                                         parse_percent_or_int, parse_port, parse_size, parse_volume)

GOOD = [
    (parse_duration, "1s", 1.0), (parse_duration, "500ms", 0.5), (parse_duration, "2m", 120.0),
    (parse_duration, "1h", 3600.0), (parse_duration, 3, 3.0), (parse_duration, "1.5s", 1.5),
    (parse_size, "128M", 134217728), (parse_size, "1G", 1073741824), (parse_size, "64k", 65536),
    (parse_size, "512Mi", 536870912), (parse_size, 4096, 4096), (parse_size, "1MB", 1048576),
    (parse_port, "8080:80", (8080, 80, "tcp")), (parse_port, "5353:53/udp", (5353, 53, "udp")),
    (parse_volume, "data:/data", ("data", "/data", False, False)), (parse_volume, "d:/x/:ro", ("d", "/x", True, False)),
    (parse_volume, "m:/m:shared", ("m", "/m", False, True)), (parse_volume, "m:/m:ro,shared", ("m", "/m", True, True)),
    (parse_mode, "0755", 0o755), (parse_mode, 0o644, 0o644), (parse_mode, "644", 0o644),
    (parse_owner, "1000:100", (1000, 100)), (parse_owner, 33, (33, 33)),
    (parse_percent_or_int, 2, (2, None)), (parse_percent_or_int, "25%", (None, 25.0)),
    (normalise_dest, "/srv//www/./x/", "/srv/www/x"), (normalise_dest, "/", "/"),
]

BAD = [
    (parse_duration, "soon"), (parse_duration, True), (parse_duration, -1), (parse_duration, "1d"),
    (parse_size, "lots"), (parse_size, 0), (parse_size, "-1M"),
    (parse_port, "80"), (parse_port, 80), (parse_port, "0:80"), (parse_port, "80:70000"), (parse_port, "a:b"),
    (parse_volume, "data"), (parse_volume, "data:rel"), (parse_volume, "Bad Name:/x"),
    (parse_volume, "m:/m:ro,rw"), (parse_volume, "m:/m:bogus"),
    (parse_mode, "rwx"), (parse_mode, "0999"), (parse_owner, "root"), (parse_owner, -1),
    (parse_percent_or_int, 0), (parse_percent_or_int, "150%"), (normalise_dest, "rel/path"),
    (normalise_dest, "/a/../b"),
]


@pytest.mark.parametrize("fn,raw,want", GOOD)
def test_good_values(fn, raw, want):
    assert fn(raw) == want


@pytest.mark.parametrize("fn,raw", BAD)
def test_bad_values(fn, raw):
    with pytest.raises(ValueError):
        fn(raw)


def test_yaml_mode_is_octal_as_written(tmp_path):
    from orchestrator.manifest.source import read_documents
    (tmp_path / "m.yaml").write_text("a: 644\nb: 0755\nc: '0600'\n")
    data = read_documents(str(tmp_path / "m.yaml"))[0].data
    assert [parse_mode(data[k]) for k in "abc"] == [0o644, 0o755, 0o600]
