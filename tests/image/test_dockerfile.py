"""The Dockerfile parser and planner (pure): syntax, substitution, stages, refusals with line numbers."""
import pytest

from orchestrator.errors import ManifestError
from orchestrator.image.dockerfile import (Copy, Mkdir, Run, apt_packages, go_duration, parse, plan,
                                           process_word, split_raw)

AMD, ARM = "linux/amd64", "linux/arm64"


def stages(text, platform=AMD, args=None, target=None):
    return plan(parse(text, "Dockerfile"), platform, args, target)


def final(text, **kw):
    return stages(text, **kw)[-1]


# ---------------------------------------------------------------- syntax

@pytest.mark.parametrize("text, keyword, args, exec_form, line", [
    ("FROM scratch\n", "FROM", "scratch", None, 1),
    ("from scratch\n", "FROM", "scratch", None, 1),                      # keywords are case-insensitive
    ("# c\n\nFROM scratch\n", "FROM", "scratch", None, 3),
    ("FROM scratch \\\n  AS base\n", "FROM", "scratch   AS base", None, 1),
    ("FROM scratch \\\n# comment inside\n\n  AS base\n", "FROM", "scratch   AS base", None, 1),
    ('CMD ["a", "b c"]\n', "CMD", '["a", "b c"]', ("a", "b c"), 1),
    ('CMD [not json\n', "CMD", "[not json", None, 1),                   # not JSON: shell form
    ("# escape=`\nRUN a `\n b\n", "RUN", "a  b", None, 2),
])
def test_instruction_syntax(text, keyword, args, exec_form, line):
    ins = parse(text).instructions[0]
    assert (ins.keyword, ins.args, ins.exec_form, ins.line) == (keyword, args, exec_form, line)


def test_flags_come_before_arguments():
    ins = parse("COPY --from=build --chown=1:2 a b\n").instructions[0]
    assert ins.flags == (("from", "build"), ("chown", "1:2")) and ins.args == "a b"


def test_directives_only_at_the_top():
    df = parse("FROM scratch\n# escape=`\nRUN a \\\n b\n")
    assert df.escape == "\\" and df.instructions[1].args == "a  b"


@pytest.mark.parametrize("text, line, fragment", [
    ("FROM scratch\nFOO bar\n", 2, "unknown instruction FOO"),
    ("# syntax=example.com/custom:1\nFROM scratch\n", 1, "custom frontend"),
    ("# escape=x\nFROM scratch\n", 1, "escape"),
    ("# escape=\\\n# escape=`\nFROM scratch\n", 2, "given twice"),
])
def test_syntax_errors_are_located(text, line, fragment):
    with pytest.raises(ManifestError) as err:
        parse(text, "app/Dockerfile")
    assert err.value.line == line and fragment in str(err.value)
    assert str(err.value).startswith(f"app/Dockerfile:{line}: ")


# ---------------------------------------------------------------- words and substitution

@pytest.mark.parametrize("word, env, out", [
    ("$A", {"A": "1"}, "1"),
    ("${A}x", {"A": "1"}, "1x"),
    ("$A-$B", {"A": "1"}, "1-"),
    ("${A:-def}", {}, "def"),
    ("${A:-def}", {"A": ""}, "def"),
    ("${A-def}", {"A": ""}, ""),
    ("${A:+alt}", {"A": "1"}, "alt"),
    ("${A:+alt}", {}, ""),
    ("${A+alt}", {"A": ""}, "alt"),
    ("${A:-${B}}", {"B": "b"}, "b"),
    ("'$A'", {"A": "1"}, "$A"),
    ('"$A b"', {"A": "1"}, "1 b"),
    ("\\$A", {"A": "1"}, "$A"),
    ('"a\\"b"', {}, 'a"b'),
    ("$", {}, "$"),
    ("a$1", {}, "a"),
])
def test_process_word(word, env, out):
    assert process_word(word, env) == out


def test_unsupported_substitution_is_refused():
    with pytest.raises(ManifestError, match="unsupported substitution"):
        process_word("${A#pre}", {"A": "x"})


def test_split_raw_keeps_quotes_for_later():
    assert split_raw('A="x y" B=\'z w\' C=d\\ e') == ['A="x y"', "B='z w'", "C=d\\ e"]


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("1m30s", 90), ("500ms", 0.5), ("1h", 3600)])
def test_go_duration(text, seconds):
    assert go_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "1x", "s"])
def test_go_duration_refuses(text):
    with pytest.raises(ValueError):
        go_duration(text)


# ---------------------------------------------------------------- ARG / ENV scoping

def test_env_uses_values_from_before_the_instruction():
    st = final("FROM scratch\nENV A=hello\nENV A=bye B=$A\n")
    assert st.env == {"A": "bye", "B": "hello"}


def test_env_legacy_form_and_quotes():
    st = final('FROM scratch\nENV GREETING hello big world\nENV Q="a b" R=c\\ d\n')
    assert st.env == {"GREETING": "hello big world", "Q": "a b", "R": "c d"}


def test_global_args_reach_from_only_when_redeclared():
    text = "ARG SUITE=bookworm\nARG V=1\nFROM debian:${SUITE}-slim\nARG V\nENV X=$SUITE Y=$V\n"
    st = final(text)
    assert (st.base.kind, st.base.suite, st.base.slim) == ("debian", "bookworm", True)
    assert st.env == {"X": "", "Y": "1"}


def test_build_args_override_defaults():
    text = "ARG SUITE=bookworm\nFROM debian:$SUITE\nARG MODE=dev\nENV MODE=$MODE\n"
    st = final(text, args={"SUITE": "trixie", "MODE": "prod"})
    assert st.base.suite == "trixie" and st.env == {"MODE": "prod"}


def test_platform_args_follow_the_target():
    text = "FROM scratch\nARG TARGETARCH\nARG TARGETPLATFORM\nENV A=$TARGETARCH P=$TARGETPLATFORM U=$TARGETOS\n"
    assert final(text, platform=ARM).env == {"A": "arm64", "P": ARM, "U": ""}


def test_run_sees_args_and_env_above_it_only():
    st = final("FROM scratch\nARG A=1\nENV B=2\nRUN echo\nENV C=3\n")
    run = st.steps[0]
    assert isinstance(run, Run) and dict(run.env) == {"A": "1", "B": "2"}
    assert run.argv == ("/bin/sh", "-c", "echo")


def test_env_overrides_arg_of_the_same_name():
    st = final("FROM scratch\nARG A=arg\nENV A=env\nRUN x\n")
    assert dict(st.steps[0].env) == {"A": "env"}


# ---------------------------------------------------------------- instructions

def test_config_instructions():
    st = final("""FROM scratch
WORKDIR /srv
WORKDIR app
USER www-data:www-data
SHELL ["/bin/bash", "-eo", "pipefail", "-c"]
RUN make
EXPOSE 80 53/udp 8000-8001
LABEL a=b "c d"=e
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/init"]
CMD run --fast
""")
    assert st.workdir == "/srv/app" and st.user == "www-data:www-data"
    assert [s for s in st.steps if isinstance(s, Mkdir)] == [Mkdir(2, "/srv"), Mkdir(3, "/srv/app")]
    run = st.steps[2]
    assert run.argv == ("/bin/bash", "-eo", "pipefail", "-c", "make") and run.workdir == "/srv/app"
    assert run.user == "www-data:www-data"
    assert st.expose == ["80/tcp", "53/udp", "8000/tcp", "8001/tcp"]
    assert st.labels == {"a": "b", "c d": "e"} and st.stop_signal == "SIGQUIT"
    assert st.entrypoint == ("/init",) and st.cmd == ("/bin/bash", "-eo", "pipefail", "-c", "run --fast")


def test_healthcheck():
    h = final("FROM scratch\nHEALTHCHECK --interval=2s --timeout=1s --retries=5 --start-period=1m "
              "CMD curl -f http://localhost/\n").health
    assert h.command == ("/bin/sh", "-c", "curl -f http://localhost/")
    assert (h.interval, h.timeout, h.retries, h.start_period) == (2, 1, 5, 60)
    assert final('FROM scratch\nHEALTHCHECK CMD ["/bin/check"]\n').health.command == ("/bin/check",)
    assert final("FROM scratch\nHEALTHCHECK NONE\n").health.command == ()


def test_copy_forms():
    st = final("""FROM scratch
WORKDIR /srv
ARG F=app.py
COPY $F ./
COPY ["a b.txt", "c", "/data/"]
COPY --chown=app:app --chmod=0640 conf /etc/conf
ADD x.txt rel/y.txt
COPY *.py /py
""")
    copies = [s for s in st.steps if isinstance(s, Copy)]
    assert copies[0] == Copy(4, ("app.py",), "/srv/")
    assert copies[1].sources == ("a b.txt", "c") and copies[1].dest == "/data/"
    assert copies[2].chown == "app:app" and copies[2].chmod == 0o640 and copies[2].dest == "/etc/conf"
    assert copies[3].add and copies[3].dest == "/srv/rel/y.txt"
    assert copies[4].dest == "/py/"                 # a glob names a directory


def test_multi_stage_prunes_what_the_target_does_not_need():
    text = """FROM scratch AS unused
FROM debian:bookworm AS build
RUN make
FROM scratch AS other
FROM build AS test
FROM scratch
COPY --from=build /out /out
COPY --from=1 /out2 /out2
"""
    names = [s.name for s in stages(text)]
    assert names == ["build", "4"]
    assert [s.name for s in stages(text, target="test")] == ["build", "test"]
    assert final(text, target="test").base.kind == "stage"


def test_from_stage_inherits_env_and_workdir():
    st = final("FROM scratch AS a\nENV A=1\nWORKDIR /w\nFROM a\nRUN x\n")
    assert st.env == {"A": "1"} and st.steps[0].workdir == "/w" and dict(st.steps[0].env) == {"A": "1"}


@pytest.mark.parametrize("ref, kind, detail", [
    ("debian:bookworm", "debian", ("bookworm", False)),
    ("debian:bookworm-slim", "debian", ("bookworm", True)),
    ("debian:12-slim", "debian", ("bookworm", True)),
    ("docker.io/library/debian:trixie", "debian", ("trixie", False)),
    ("scratch", "scratch", None),
    ("127.0.0.1:5000/team/base:1", "registry", "127.0.0.1:5000/team/base:1"),
    ("python:3.11-slim", "registry", "registry-1.docker.io/library/python:3.11-slim"),
    ("someone/tool", "registry", "registry-1.docker.io/someone/tool"),
])
def test_from_resolution(ref, kind, detail):
    base = final(f"FROM {ref}\n").base
    assert base.kind == kind
    if kind == "debian":
        assert (base.suite, base.slim) == detail
    elif kind == "registry":
        assert base.registry_ref == detail


def test_apt_get_joins_the_debian_base():
    st = final("""FROM debian:bookworm-slim
RUN apt-get update \\
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends uwsgi uwsgi-plugin-python3 \\
 && rm -rf /var/lib/apt/lists/*
RUN set -eux; apt-get install -y curl; useradd app
""")
    assert st.packages == ["uwsgi", "uwsgi-plugin-python3", "curl"]
    assert len(st.steps) == 1 and st.steps[0].argv == ("/bin/sh", "-c", "set -eux; useradd app")


@pytest.mark.parametrize("command, packages, rest", [
    ("apt-get update && apt-get install -y aa b2", ["aa", "b2"], None),
    ("apt-get install -qy aa; apt-get clean", ["aa"], None),
    ("apt install aa && echo ok", ["aa"], "echo ok"),
    ("echo 'apt-get install x' && true", None, None),
    ("make", None, None),
])
def test_apt_packages(command, packages, rest):
    def where(m, hint=None):
        return ManifestError(m)
    assert apt_packages(command, where) == (packages, rest)


# ---------------------------------------------------------------- refusals, located

@pytest.mark.parametrize("text, line, fragment", [
    ("FROM scratch\nVOLUME /data\n", 2, "VOLUME"),
    ("FROM scratch\nONBUILD RUN x\n", 2, "ONBUILD"),
    ("FROM scratch\nADD https://example.com/x /x\n", 2, "without network"),
    ("FROM scratch\nRUN --mount=type=cache,target=/c make\n", 2, "--mount"),
    ("FROM scratch\nRUN --network=host make\n", 2, "without network"),
    ("FROM scratch\nCOPY --parents a /b/\n", 2, "--parents"),
    ("FROM scratch\nRUN <<EOF\necho\nEOF\n", 2, "heredoc"),
    ("RUN x\nFROM scratch\n", 1, "before the first FROM"),
    ("FROM scratch\nCOPY --from=nowhere /a /b\n", 2, "no earlier stage"),
    ("FROM scratch\nRUN apt-get install -y curl\n", 2, "FROM debian"),
    ("FROM debian:bookworm\nRUN make && apt-get install -y curl\n", 2, "after other commands"),
    ("FROM debian:bookworm\nRUN apt-get install -y curl=7.1\n", 2, "orch.lock"),
    ("FROM debian:bookworm\nRUN apt-get install -y curl || true\n", 2, "||"),
    ("FROM debian:bookworm\nRUN apt-get -t bookworm-backports install x\n", 2, "FROM suite"),
    ("FROM debian\n", 1, "name a Debian suite"),
    ("FROM debian:latest\n", 1, "debian:SUITE"),
    ("FROM scratch AS a\nFROM scratch AS a\n", 2, "defined twice"),
    ("FROM scratch\nSHELL /bin/bash -c\n", 2, "JSON form"),
    ("FROM scratch\nEXPOSE http\n", 2, "EXPOSE"),
    ("FROM scratch\nSTOPSIGNAL now\n", 2, "STOPSIGNAL"),
    ("FROM scratch\nHEALTHCHECK --interval=soon CMD x\n", 2, "--interval"),
    ("FROM scratch\nHEALTHCHECK x\n", 2, "HEALTHCHECK"),
    ("FROM scratch\nHEALTHCHECK --start-interval=1s CMD x\n", 2, "--start-interval"),
    ("FROM scratch\nCOPY --chmod=u+x a /a\n", 2, "--chmod"),
    ("FROM scratch\nCOPY a\n", 2, "source and a destination"),
    ("FROM --platform=linux/s390x scratch\n", 1, "--platform"),
    ("FROM scratch\nENV X=${A:?no}\n", 2, "unsupported substitution"),
])
def test_refusals_name_path_and_line(text, line, fragment):
    with pytest.raises(ManifestError) as err:
        stages(text)
    assert err.value.file == "Dockerfile" and err.value.line == line, str(err.value)
    assert fragment in str(err.value)


def test_unknown_target_is_refused():
    with pytest.raises(ManifestError, match="no stage named 'nope'"):
        stages("FROM scratch AS a\n", target="nope")


def test_from_platform_build_platform_stage():
    text = "FROM --platform=$BUILDPLATFORM scratch AS tools\nRUN make\nFROM scratch\nCOPY --from=tools /t /t\n"
    tools, image = stages(text, platform=ARM)
    assert tools.platform == AMD and image.platform == ARM
