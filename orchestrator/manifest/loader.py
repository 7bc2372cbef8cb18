"""``load_desired(directory, vars)``: every manifest of a directory -> one validated ``Desired``.

Two passes: collect ``vars:`` from all documents (``--var`` wins), then render Jinja2
markup in string values (StrictUndefined) and validate each document into the model.
Pure except for reading the manifests and the files they name (copy/template sources).
"""
from __future__ import annotations

import dataclasses
import glob
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Tuple

from orchestrator.errors import LabError, ManifestError
from orchestrator.lab.layout import HOST_KINDS
from orchestrator.manifest import schema as S
from orchestrator.manifest.model import (
    DEFAULT_FLEET, CopyStep, DebianBase, DeploySpec, Desired, Fleet, FleetHost, HealthCheck,
    HostSelector, ImageConfig, ImageSpec, LabSpec, OciBase, Port, RegistryBase, Resources,
    RunStep, ScratchBase, Secret, Service, Strategy, TemplateStep, Volume, frozen_map)
from orchestrator.manifest.schema import Ctx
from orchestrator.manifest.source import Doc, LMap, Renderer, display_path, read_documents, render_tree
from orchestrator.manifest.units import (
    PLATFORMS, check_link_rate, check_name, normalise_dest, parse_duration, parse_mode, parse_owner,
    parse_percent_or_int, parse_port, parse_size, parse_volume)
from runtime import spec

KINDS = ("Fleet", "Service")
_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_SUITE = re.compile(r"^[a-z][a-z0-9-]*$")
_REF = re.compile(r"^(?P<host>[a-zA-Z0-9.-]+(?::\d+)?|\[[0-9a-fA-F:]+\](?::\d+)?)/"
                  r"(?P<repo>[a-z0-9]+(?:[._/-][a-z0-9]+)*)"
                  r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIGNAL = re.compile(r"^(SIG[A-Z0-9+-]+|\d+)$")


def manifest_files(directory: str) -> List[str]:
    """The manifest files of a directory (top level, ``*.yaml``/``*.yml``, sorted by name)."""
    files = glob.glob(os.path.join(directory, "*.yaml")) + glob.glob(os.path.join(directory, "*.yml"))
    return sorted(files)


def load_desired(directory: str, vars: Optional[Mapping[str, Any]] = None, *,
                 problems: Optional[List[ManifestError]] = None) -> Desired:
    """Load, render and validate every manifest under ``directory``. Raises ManifestError.

    With a ``problems`` list, a Service document that fails is recorded there and left out,
    so that one call reports the first problem of every service (``manifest.inputs``)."""
    directory = os.path.abspath(directory)
    if not os.path.isdir(directory):
        raise ManifestError(f'no such directory "{display_path(directory)}"')
    files = manifest_files(directory)
    if not files:
        raise ManifestError(f'no manifests (*.yaml) in "{display_path(directory)}"')
    from orchestrator.manifest import parse_cache
    parse_cache.forget()        # what an earlier load that failed noted is not written
    docs = [d for f in files for d in read_documents(f)]
    variables = _collect_vars(docs)
    variables.update(dict(vars or {}))
    env = Renderer()

    fleet: Optional[Fleet] = None
    pending: List[Tuple[Doc, LMap]] = []
    # the Fleet first: services' templates may use its inventory (``hosts[NAME].address``)
    docs = sorted(docs, key=lambda d: 0 if isinstance(d.data, dict) and d.data.get("kind") == "Fleet" else 1)
    service_vars: Optional[Dict[str, Any]] = None
    for doc in docs:
        ctx = Ctx(doc.file, (), doc.line)
        data = doc.data
        if not isinstance(data, dict):
            raise ctx.error(f"expected a mapping with kind: Fleet or kind: Service, got {S.describe(data)}")
        if "kind" not in data:
            if set(data) == {"vars"}:
                continue
            raise ctx.error('missing key "kind" (Fleet or Service)')
        kind = data["kind"]
        if kind not in KINDS:
            guess = S.did_you_mean(str(kind), KINDS)
            raise ctx.key(data, "kind").error(
                f'unknown kind "{kind}"', hint=f'did you mean "{guess}"?' if guess else "expected Fleet or Service")
        body = LMap((k, v) for k, v in data.items() if k != "vars")
        body.line, body.key_lines = data.line, data.key_lines
        prefix: tuple = ()
        if isinstance(data.get("name"), str) and "{" not in data["name"]:
            prefix = ("services" if kind == "Service" else "fleet", data["name"])
        if kind == "Service" and service_vars is None:
            service_vars = _with_inventory(variables, fleet or DEFAULT_FLEET)
        try:
            body = render_tree(body, env, variables if kind == "Fleet" else service_vars,
                               doc.file, prefix, doc.line)
        except ManifestError as exc:
            if problems is None or kind == "Fleet":
                raise
            problems.append(exc)
            continue
        if kind == "Fleet":
            if fleet is not None:
                raise ctx.error(f"a second Fleet (the first is {fleet.file}:{fleet.line}); one fleet per directory")
            fleet = _fleet(body, doc)
        else:
            pending.append((doc, body))

    fleet = fleet or DEFAULT_FLEET
    services: Dict[str, Service] = {}
    for doc, body in pending:
        try:
            svc = _service(body, doc, fleet, env, service_vars)
        except ManifestError as exc:
            if problems is None:
                raise
            problems.append(exc)
            continue
        if svc.name in services:
            first = services[svc.name]
            raise Ctx(doc.file, ("services", svc.name), doc.line).error(
                f"service defined twice (first at {first.file}:{first.line})")
        services[svc.name] = svc
    _check_ports(services)
    _check_needs(services)
    desired = Desired(directory=directory, fleet=fleet, services=frozen_map(services),
                      vars=frozen_map(variables))
    if problems is None:        # else the caller decides (inputs.load_checked)
        parse_cache.flush()     # bad manifests write nothing, not even their parse
    return desired


def _with_inventory(variables: Mapping[str, Any], fleet: Fleet) -> Dict[str, Any]:
    """Template variables for services: the manifests' vars, and ``hosts`` (the fleet's
    inventory) unless a var of that name is set."""
    from orchestrator.fleet.inventory import host_vars
    out = dict(variables)
    out.setdefault("hosts", host_vars(fleet))
    return out


def _check_needs(services: Mapping[str, Service]) -> None:
    """Every service a service needs is in the manifests, and nothing needs itself round a cycle."""
    for svc in services.values():
        ctx = Ctx(svc.file, ("services", svc.name, "deploy", "needs"), svc.line)
        for n in svc.deploy.needs:
            if n == svc.name:
                raise ctx.error("a service cannot need itself")
            if n not in services:
                guess = S.did_you_mean(n, list(services))
                raise ctx.error(f'no service "{n}" in the manifests',
                                hint=f'did you mean "{guess}"?' if guess else None)
            if services[n].deploy.network == "host":
                raise ctx.error(f'service "{n}" runs with network: host, which is the host '
                                "itself to a container: nothing on the bridge reaches the host, "
                                "so no name can lead there")
    try:
        needs_order(services)
    except ValueError as exc:
        svc = services[str(exc)]
        raise Ctx(svc.file, ("services", svc.name, "deploy", "needs"), svc.line).error(
            "services need each other in a cycle: " + " -> ".join(_cycle(services, svc.name))) from None


def needs_order(services: Mapping[str, Service]) -> List[str]:
    """Service names with every service before those that need it (stores before apps);
    otherwise in name order. ValueError(name) on a cycle."""
    out: List[str] = []
    state: Dict[str, int] = {}

    def visit(name: str) -> None:
        if state.get(name) == 2:
            return
        if state.get(name) == 1:
            raise ValueError(name)
        state[name] = 1
        for n in sorted(services[name].deploy.needs):
            if n in services:
                visit(n)
        state[name] = 2
        out.append(name)

    for name in sorted(services):
        visit(name)
    return out


def _cycle(services: Mapping[str, Service], start: str) -> List[str]:
    path, name = [start], start
    while True:
        name = next(n for n in sorted(services[name].deploy.needs) if n in services)
        path.append(name)
        if name in path[:-1]:
            return path[path.index(name):]


def _collect_vars(docs: List[Doc]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    seen: Dict[str, str] = {}
    for doc in docs:
        data = doc.data
        if not isinstance(data, dict) or "vars" not in data:
            continue
        ctx = Ctx(doc.file, ("vars",), data.key_lines.get("vars", doc.line))
        if not isinstance(data["vars"], dict):
            raise ctx.error(f"expected a mapping of variables, got {S.describe(data['vars'])}")
        for k, v in data["vars"].items():
            kctx = ctx.key(data["vars"], k)
            if not isinstance(k, str) or not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", k):
                raise kctx.error(f'expected a variable name, got "{k}"')
            if k in out and out[k] != v:
                raise kctx.error(f'variable defined twice with different values (first at {seen[k]})')
            out[k], seen[k] = v, f"{doc.file}:{kctx.line}"
    return out


# ---------------------------------------------------------------- fleet

def _fleet(body: LMap, doc: Doc) -> Fleet:
    ctx = Ctx(doc.file, ("fleet",) + ((body["name"],) if isinstance(body.get("name"), str) else ()), doc.line)
    S.mapping(body, ctx, ("kind", "name", "project", "lab", "hosts", "bandwidth", "wire"),
              required=("name",))
    name = S.convert(check_name, body["name"], Ctx(doc.file, ("fleet",), doc.line).key(body, "name"))
    ctx = Ctx(doc.file, ("fleet", name), doc.line)
    project = S.convert(check_name, body["project"], ctx.key(body, "project")) \
        if body.get("project") is not None else None
    link = {"bandwidth": S.convert(check_link_rate, body["bandwidth"], ctx.key(body, "bandwidth"))
            if body.get("bandwidth") is not None else None,
            "wire": S.convert(_wire_mode, body["wire"], ctx.key(body, "wire"))
            if body.get("wire") is not None else "auto"}
    which = S.one_of_keys(body, ctx, ("lab", "hosts"))
    if which == "lab":
        lctx = ctx.key(body, "lab")
        keys = {("hosts" if kind == "amd64" else kind): kind for kind in HOST_KINDS}   # the lab's own kinds
        lab = S.mapping(body["lab"] if body["lab"] is not None else LMap(), lctx, tuple(keys) + ("link_rate",))
        spec = LabSpec(
            name=name,
            link_rate=S.string(lab["link_rate"], lctx.key(lab, "link_rate"))
            if lab.get("link_rate") is not None else None,
            **{kind: S.integer(lab.get(key, getattr(LabSpec, kind)), lctx.key(lab, key), minimum=0)
               for key, kind in keys.items()})
        try:
            spec.validate()        # the lab's own limits, the one place they live
        except LabError as exc:
            raise lctx.error(str(exc)) from None
        return Fleet(name=name, lab=spec, file=doc.file, line=doc.line, project=project, **link)
    hctx = ctx.key(body, "hosts")
    seq = S.items(body["hosts"], hctx)
    if not seq:
        raise hctx.error("expected at least one host")
    hosts: List[FleetHost] = []
    for i, raw in enumerate(seq):
        ictx = hctx.item(seq, i)
        h = S.mapping(raw, ictx, ("name", "address", "user", "port", "labels", "platform"),
                      required=("name", "address"))
        hname = S.convert(check_name, h["name"], ictx.key(h, "name"))
        if any(x.name == hname for x in hosts):
            raise ictx.key(h, "name").error(f'host "{hname}" listed twice')
        platform = None
        if h.get("platform") is not None:
            platform = _platform(h["platform"], ictx.key(h, "platform"))
        hosts.append(FleetHost(
            name=hname,
            address=S.string(h["address"], ictx.key(h, "address")),
            user=S.string(h.get("user", "root"), ictx.key(h, "user")),
            port=S.integer(h.get("port", 22), ictx.key(h, "port"), minimum=1, maximum=65535),
            labels=frozen_map(S.string_map(h.get("labels", {}), ictx.key(h, "labels"))),
            platform=platform))
    return Fleet(name=name, hosts=tuple(hosts), file=doc.file, line=doc.line, project=project, **link)


def _wire_mode(value: object) -> str:
    if value not in ("auto", "xz", "gzip"):
        raise ValueError(f'expected auto, xz or gzip, got "{value}"')
    return str(value)


def _platform(value: Any, ctx: Ctx) -> str:
    if value not in PLATFORMS:
        guess = S.did_you_mean(str(value), PLATFORMS)
        hint = f'did you mean "{guess}"?' if guess else f"supported: {', '.join(PLATFORMS)}"
        if value in ("linux/arm/v6", "linux/arm"):
            hint = "Debian's armhf is ARMv7 (Pi 2 and later); ARMv6 boards are not supported"
        raise ctx.error(f'unsupported platform "{value}"', hint=hint)
    return value


def fleet_platforms(fleet: Fleet) -> Tuple[str, ...]:
    """Platforms a fleet runs (the default for a service's ``image.platforms``)."""
    if fleet.lab is not None:
        return fleet.lab.platforms()
    declared = {h.platform for h in fleet.hosts}
    if None in declared:
        return PLATFORMS
    return tuple(p for p in PLATFORMS if p in declared)


# ---------------------------------------------------------------- service

def _service(body: LMap, doc: Doc, fleet: Fleet, env, variables) -> Service:
    ctx = Ctx(doc.file, ("services",) + ((body["name"],) if isinstance(body.get("name"), str) else ()), doc.line)
    S.mapping(body, ctx, ("kind", "name", "image", "deploy", "push"), required=("name", "image"))
    name_ctx = Ctx(doc.file, ("services",), doc.line).key(body, "name")
    try:
        name = spec.check_service_name(body["name"])
    except spec.SpecError as exc:
        raise name_ctx.error(exc.reason) from None
    ctx = Ctx(doc.file, ("services", name), doc.line)
    directory = os.path.dirname(doc.path)
    image = _image(body["image"], ctx.key(body, "image"), directory, fleet, env, variables, name)
    deploy_raw = body.get("deploy")
    deploy = _deploy(deploy_raw if deploy_raw is not None else LMap(), ctx.key(body, "deploy"),
                     fleet, directory)
    if image.health is not None and not (isinstance(deploy_raw, dict) and "health" in deploy_raw):
        deploy = dataclasses.replace(deploy, health=image.health)     # the Dockerfile's HEALTHCHECK
    push = _push_ref(body["push"], ctx.key(body, "push")) if "push" in body else None
    return Service(name=name, image=image, deploy=deploy, file=doc.file, line=doc.line,
                   directory=directory, push=push)


def _push_ref(raw: Any, ctx: Ctx) -> str:
    ref = S.string(raw, ctx)
    if not _REF.match(ref) or "@" in ref:
        raise ctx.error(f'expected REGISTRY/REPO[:TAG] like "registry.example:5000/team/web:1", got "{ref}"')
    return ref


_IMAGE_KEYS = ("from", "platforms", "steps", "env", "entrypoint", "cmd", "workdir", "user", "labels",
               "expose", "stop_signal")


def _image(raw: Any, ctx: Ctx, directory: str, fleet: Fleet, env, variables, service: str) -> ImageSpec:
    if isinstance(raw, dict) and "dockerfile" in raw:
        return _dockerfile(raw, ctx, directory, fleet)
    m = S.mapping(raw, ctx, _IMAGE_KEYS, required=("from",))
    base = _base(m["from"], ctx.key(m, "from"), directory)
    platforms = _platforms(m, ctx, fleet)
    steps = []
    if "steps" in m:
        sctx = ctx.key(m, "steps")
        seq = S.items(m["steps"], sctx)
        for i, raw_step in enumerate(seq):
            steps.append(_step(raw_step, sctx.item(seq, i), directory, env, variables, service))
    config = ImageConfig(
        env=frozen_map(S.string_map(m["env"], ctx.key(m, "env"), key_check=_env_key)) if "env" in m else frozen_map({}),
        entrypoint=S.argv(m["entrypoint"], ctx.key(m, "entrypoint")) if "entrypoint" in m else None,
        cmd=S.argv(m["cmd"], ctx.key(m, "cmd")) if "cmd" in m else None,
        workdir=S.convert(normalise_dest, S.string(m["workdir"], ctx.key(m, "workdir")), ctx.key(m, "workdir"))
        if "workdir" in m else None,
        user=S.scalar_string(m["user"], ctx.key(m, "user")) if "user" in m else None,
        labels=frozen_map(S.string_map(m["labels"], ctx.key(m, "labels"))) if "labels" in m else frozen_map({}),
        expose=_expose(m["expose"], ctx.key(m, "expose")) if "expose" in m else (),
        stop_signal=_signal(m["stop_signal"], ctx.key(m, "stop_signal")) if "stop_signal" in m else None)
    return ImageSpec(base=base, platforms=tuple(platforms), steps=tuple(steps), config=config)


def _platforms(m: LMap, ctx: Ctx, fleet: Fleet) -> List[str]:
    if "platforms" not in m:
        return list(fleet_platforms(fleet))
    pctx = ctx.key(m, "platforms")
    names = S.string_list(m["platforms"], pctx, nonempty=True)
    platforms: List[str] = []
    for i, p in enumerate(names):
        p = _platform(p, pctx.item(m["platforms"], i))
        if p in platforms:
            raise pctx.item(m["platforms"], i).error(f'platform "{p}" listed twice')
        platforms.append(p)
    return platforms


def _dockerfile(m: LMap, ctx: Ctx, directory: str, fleet: Fleet) -> ImageSpec:
    """image: {dockerfile: PATH, context: DIR, target: STAGE, args: {...}, platforms: [...]}"""
    from orchestrator.image.context import dockerfile_image
    from orchestrator.image.sandbox import host_platform
    S.mapping(m, ctx, ("dockerfile", "context", "target", "args", "platforms"), required=("dockerfile",))
    platforms = _platforms(m, ctx, fleet)
    path = _source_path(S.string(m["dockerfile"], ctx.key(m, "dockerfile")), ctx.key(m, "dockerfile"),
                        directory, allow_dir=False)
    if "context" in m:
        context = _source_path(S.string(m["context"], ctx.key(m, "context")), ctx.key(m, "context"),
                               directory, allow_dir=True)
        if not os.path.isdir(context):
            raise ctx.key(m, "context").error("expected a directory")
    else:
        context = os.path.dirname(path)
    target = S.string(m["target"], ctx.key(m, "target")) if "target" in m else None
    actx = ctx.key(m, "args")
    args = S.string_map(m["args"], actx, key_check=_env_key) if "args" in m else {}
    return dockerfile_image(path, display_path(path), context, platforms, args, target, host_platform(),
                            lambda name: actx.key(m["args"], name).error(
                                f'the Dockerfile declares no ARG {name}'),
                            name=os.path.relpath(path, os.path.realpath(directory)))


def _env_key(k: str) -> str:
    if not _ENV_KEY.match(k):
        raise ValueError(f'expected an environment variable name, got "{k}"')
    return k


def _expose(raw: Any, ctx: Ctx) -> Tuple[str, ...]:
    seq = S.items(raw, ctx)
    out = []
    for i, v in enumerate(seq):
        ictx = ctx.item(seq, i)
        text = str(v) if not isinstance(v, bool) and isinstance(v, (int, str)) else ""
        m = re.fullmatch(r"(\d+)(?:/(tcp|udp))?", text)
        if not m or not 1 <= int(m.group(1)) <= 65535:
            raise ictx.error(f'expected a port like 80 or "53/udp", got {S.describe(v)}')
        out.append(f"{int(m.group(1))}/{m.group(2) or 'tcp'}")
    return tuple(out)


def _signal(raw: Any, ctx: Ctx) -> str:
    text = str(raw) if not isinstance(raw, bool) and isinstance(raw, (int, str)) else ""
    if not _SIGNAL.match(text):
        raise ctx.error(f'expected a signal like "SIGTERM", got {S.describe(raw)}')
    return text


def _base(raw: Any, ctx: Ctx, directory: str):
    if raw == "scratch":
        return ScratchBase()
    if isinstance(raw, str):
        raise ctx.error(f'expected scratch, {{debian: SUITE}}, {{oci: DIR}} or {{registry: REF}}, got "{raw}"')
    m = S.mapping(raw, ctx, ("debian", "packages", "oci", "registry", "insecure"))
    kind = S.one_of_keys(m, ctx, ("debian", "oci", "registry"))
    extra = set(m) - {kind} - ({"packages"} if kind == "debian" else {"insecure"} if kind == "registry" else set())
    if extra:
        k = sorted(extra)[0]
        raise ctx.key(m, k).error(f'"{k}" does not apply to a {kind} base')
    if kind == "debian":
        suite = S.string(m["debian"], ctx.key(m, "debian"))
        if not _SUITE.match(suite):
            raise ctx.key(m, "debian").error(f'expected a Debian suite like "bookworm", got "{suite}"')
        pkgs = []
        if "packages" in m:
            pctx = ctx.key(m, "packages")
            for i, p in enumerate(S.string_list(m["packages"], pctx)):
                if not _PACKAGE.match(p):
                    raise pctx.item(m["packages"], i).error(f'expected a Debian package name, got "{p}"')
                pkgs.append(p)
        return DebianBase(suite=suite, packages=tuple(sorted(set(pkgs))))
    if kind == "oci":
        text = S.string(m["oci"], ctx.key(m, "oci"))
        path, tag = text, None
        head, sep, tail = text.rpartition(":")
        if sep and head and "/" not in tail:
            path, tag = head, tail
        full = os.path.normpath(os.path.join(directory, os.path.expanduser(path)))
        if not os.path.isfile(os.path.join(full, "index.json")):
            raise ctx.key(m, "oci").error(f'no OCI image layout at "{path}" (no index.json)')
        return OciBase(dir=full, tag=tag)
    ref = S.string(m["registry"], ctx.key(m, "registry"))
    if not _REF.match(ref):
        raise ctx.key(m, "registry").error(
            f'expected a reference like "registry.example:5000/name:tag", got "{ref}"')
    insecure = S.boolean(m["insecure"], ctx.key(m, "insecure")) if "insecure" in m else False
    return RegistryBase(ref=ref, insecure=insecure)


def _step(raw: Any, ctx: Ctx, directory: str, env, variables, service: str):
    if not isinstance(raw, dict):
        raise ctx.error(f"expected a step (copy:, template: or run:), got {S.describe(raw)}")
    S.mapping(raw, ctx, ("copy", "template", "run", "env"))
    kind = S.one_of_keys(raw, ctx, ("copy", "template", "run"))
    if kind == "run":
        command = S.argv(raw["run"], ctx.key(raw, "run"))
        run_env = S.string_map(raw["env"], ctx.key(raw, "env"), key_check=_env_key) if "env" in raw else {}
        return RunStep(command=command, env=frozen_map(run_env))
    if "env" in raw:
        raise ctx.key(raw, "env").error(f'"env" applies to run steps only, not {kind}')
    sctx = ctx.key(raw, kind)
    m = S.mapping(raw[kind], sctx, ("src", "dest", "mode", "owner"), required=("src", "dest"))
    src = S.string(m["src"], sctx.key(m, "src"))
    path = _source_path(src, sctx.key(m, "src"), directory, allow_dir=(kind == "copy"))
    dest_raw = S.string(m["dest"], sctx.key(m, "dest"))
    dest = S.convert(normalise_dest, dest_raw, sctx.key(m, "dest"))
    if dest == "/" and (kind == "template" or os.path.isfile(path)):
        raise sctx.key(m, "dest").error('a file cannot be copied to "/"; name the destination file')
    if dest_raw.endswith("/") and os.path.isfile(path):
        dest = dest.rstrip("/") + "/" + os.path.basename(path)
    mode = S.convert(parse_mode, m["mode"], sctx.key(m, "mode")) if "mode" in m else None
    owner = S.convert(parse_owner, m["owner"], sctx.key(m, "owner")) if "owner" in m else None
    if kind == "copy":
        return CopyStep(src=src, path=path, dest=dest, mode=mode, owner=owner)
    try:
        with open(path, "r", encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise sctx.key(m, "src").error(f'cannot read template "{src}": {exc}') from None
    try:
        content = env.render(text, dict(variables, service=service)).encode()
    except ValueError as exc:
        raise sctx.key(m, "src").error(f'{display_path(path)}: {exc}') from None
    return TemplateStep(src=src, path=path, dest=dest, content=content, mode=mode, owner=owner)


def _source_path(src: str, ctx: Ctx, directory: str, allow_dir: bool) -> str:
    """The real path of a copy/template source; refused when it leaves the manifest's directory."""
    if os.path.isabs(src) or src.startswith("~"):
        raise ctx.error(f'absolute source "{src}" refused: sources are relative to the manifest directory')
    if ".." in src.replace("\\", "/").split("/"):
        raise ctx.error(f'source "{src}" escapes the manifest directory ("..")')
    root = os.path.realpath(directory)
    joined = os.path.join(directory, src)
    if not os.path.lexists(joined):
        raise ctx.error(f'no such file "{src}"')
    real = os.path.realpath(joined)
    if not _inside(real, root):
        raise ctx.error(f'source "{src}" escapes the manifest directory (symlink to "{real}")')
    if not os.path.exists(real):
        raise ctx.error(f'no such file "{src}" (dangling symlink)')
    if os.path.isdir(real):
        if not allow_dir:
            raise ctx.error(f'"{src}" is a directory; a template is one file')
        _check_tree(real, root, src, ctx)
    elif not os.path.isfile(real):
        raise ctx.error(f'"{src}" is not a regular file or directory')
    return real


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _check_tree(top: str, root: str, src: str, ctx: Ctx) -> None:
    """Symlinks inside a copied directory must stay inside the manifest directory."""
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            if os.path.islink(p):
                target = os.readlink(p)
                resolved = os.path.realpath(os.path.join(dirpath, target)) if not os.path.isabs(target) \
                    else os.path.realpath(target)
                if os.path.isabs(target) or not _inside(resolved, root):
                    rel = os.path.relpath(p, top)
                    raise ctx.error(f'"{src}/{rel}" is a symlink to "{target}", outside the manifest directory')
            elif not (os.path.isfile(p) or os.path.isdir(p)):
                rel = os.path.relpath(p, top)
                raise ctx.error(f'"{src}/{rel}" is not a regular file, directory or symlink')


# ---------------------------------------------------------------- deploy

_DEPLOY_KEYS = ("hosts", "ports", "health", "env", "volumes", "secrets", "resources", "drain",
                "stop_timeout", "stop_first", "keep_releases", "strategy", "init", "needs",
                "stateful", "pre_stop", "userns", "network")


STATEFUL_STOP_TIMEOUT = 30.0


def _deploy(raw: Any, ctx: Ctx, fleet: Fleet, directory: str) -> DeploySpec:
    m = S.mapping(raw, ctx, _DEPLOY_KEYS)
    ports = _ports(m["ports"], ctx.key(m, "ports")) if "ports" in m else ()
    kw: Dict[str, Any] = {}
    if "drain" in m:
        kw["drain"] = S.convert(parse_duration, m["drain"], ctx.key(m, "drain"))
    if "stop_timeout" in m:
        kw["stop_timeout"] = S.convert(parse_duration, m["stop_timeout"], ctx.key(m, "stop_timeout"))
    if "stop_first" in m:
        kw["stop_first"] = S.boolean(m["stop_first"], ctx.key(m, "stop_first"))
    if "init" in m:
        kw["init"] = S.boolean(m["init"], ctx.key(m, "init"))
    if "userns" in m:
        kw["userns"] = S.boolean(m["userns"], ctx.key(m, "userns"))
    if "network" in m:
        kw["network"] = _network(m["network"], ctx.key(m, "network"))
    if "keep_releases" in m:
        kw["keep_releases"] = S.integer(m["keep_releases"], ctx.key(m, "keep_releases"), minimum=1)
    if "stateful" in m:
        kw["stateful"] = S.boolean(m["stateful"], ctx.key(m, "stateful"))
        if kw["stateful"] and "stop_timeout" not in m:
            kw["stop_timeout"] = STATEFUL_STOP_TIMEOUT    # a database gets time to shut down cleanly
    if "pre_stop" in m:
        pctx = ctx.key(m, "pre_stop")
        seq = S.items(m["pre_stop"], pctx)
        if not seq:
            raise pctx.error("expected a command: a list of strings, the program first")
        kw["pre_stop"] = tuple(S.string(x, pctx.item(seq, i)) for i, x in enumerate(seq))
    if "needs" in m:
        nctx = ctx.key(m, "needs")
        seq = S.items(m["needs"], nctx)
        kw["needs"] = tuple(sorted({S.convert(check_name, n, nctx.item(seq, i)) for i, n in enumerate(seq)}))
    deploy = DeploySpec(
        hosts=_hosts(m["hosts"], ctx.key(m, "hosts"), fleet) if "hosts" in m else HostSelector(),
        ports=ports,
        health=_health(m["health"], ctx.key(m, "health"), ports) if "health" in m else HealthCheck(),
        env=frozen_map(S.string_map(m["env"], ctx.key(m, "env"), key_check=_env_key)) if "env" in m else frozen_map({}),
        volumes=_volumes(m["volumes"], ctx.key(m, "volumes")) if "volumes" in m else (),
        secrets=_secrets(m["secrets"], ctx.key(m, "secrets"), directory) if "secrets" in m else (),
        resources=_resources(m["resources"], ctx.key(m, "resources")) if "resources" in m else Resources(),
        strategy=_strategy(m["strategy"], ctx.key(m, "strategy")) if "strategy" in m else Strategy(),
        **kw)
    try:
        deploy.agent_spec()          # what the agent would refuse is refused here, located
    except spec.SpecError as exc:
        raise _locate(ctx, m, exc.path).error(exc.reason) from None
    return deploy


def _network(raw: Any, ctx: Ctx) -> str:
    if raw not in spec.NETWORKS:
        guess = S.did_you_mean(str(raw), spec.NETWORKS) if isinstance(raw, str) else None
        raise ctx.error(f"expected {' or '.join(spec.NETWORKS)}, got {S.describe(raw)}",
                        hint=f'did you mean "{guess}"?' if guess else None)
    return raw


def _locate(ctx: Ctx, raw: Any, path: Tuple[Any, ...]) -> Ctx:
    """The manifest location of a key path of the agent's deploy spec (as deep as the
    manifest spells it: ``volumes/0/dest`` is the line of ``volumes/0``)."""
    if path[:1] == ("monitor",):
        path = ("strategy",) + path
    if path[:1] == ("secrets",) and len(path) > 1 and isinstance(raw.get("secrets"), dict):
        names = list(raw["secrets"])
        if isinstance(path[1], int) and path[1] < len(names):
            path = ("secrets", names[path[1]]) + path[2:]
    cur: Any = raw
    for key in path:
        if isinstance(cur, dict) and key in cur:
            ctx, cur = ctx.key(cur, key), cur[key]
        elif isinstance(cur, list) and isinstance(key, int) and key < len(cur):
            ctx, cur = ctx.item(cur, key), cur[key]
        else:
            ctx, cur = Ctx(ctx.file, ctx.path + (key,), ctx.line), None
    return ctx


def _hosts(raw: Any, ctx: Ctx, fleet: Fleet) -> HostSelector:
    if raw == "all":
        return HostSelector()
    if isinstance(raw, list):
        names = S.string_list(raw, ctx, nonempty=True)
        known = [h.name for h in fleet.hosts]
        for i, n in enumerate(names):
            if fleet.hosts and n not in known:
                guess = S.did_you_mean(n, known)
                raise ctx.item(raw, i).error(f'no host "{n}" in fleet "{fleet.name}"',
                                             hint=f'did you mean "{guess}"?' if guess else None)
        return HostSelector(kind="names", names=tuple(names))
    if isinstance(raw, dict):
        S.mapping(raw, ctx, ("labels",), required=("labels",))
        labels = S.string_map(raw["labels"], ctx.key(raw, "labels"))
        if not labels:
            raise ctx.key(raw, "labels").error("expected at least one label")
        return HostSelector(kind="labels", labels=frozen_map(labels))
    raise ctx.error(f'expected "all", a list of host names or {{labels: {{...}}}}, got {S.describe(raw)}')


def _ports(raw: Any, ctx: Ctx) -> Tuple[Port, ...]:
    seq = S.items(raw, ctx)
    out: List[Port] = []
    for i, v in enumerate(seq):
        ictx = ctx.item(seq, i)
        host, container, proto = S.convert(parse_port, v, ictx)
        if any(p.host == host and p.protocol == proto for p in out):
            raise ictx.error(f"host port {host}/{proto} published twice")
        out.append(Port(host, container, proto))
    return tuple(out)


def _health(raw: Any, ctx: Ctx, ports: Tuple[Port, ...]) -> HealthCheck:
    m = S.mapping(raw, ctx, ("http", "tcp", "exec", "port", "interval", "timeout", "retries",
                             "start_period"))
    kind = S.one_of_keys(m, ctx, ("http", "tcp", "exec"))
    path, port, command = None, None, ()
    if kind == "http":
        path = S.string(m["http"], ctx.key(m, "http"))
        if not path.startswith("/"):
            raise ctx.key(m, "http").error(f'expected a URL path starting with "/", got "{path}"')
        if "port" in m:
            port = S.integer(m["port"], ctx.key(m, "port"), minimum=1, maximum=65535)
        elif ports:
            port = ports[0].container
        else:
            raise ctx.error('missing "port" (and no published port to default to)')
    elif kind == "tcp":
        port = S.integer(m["tcp"], ctx.key(m, "tcp"), minimum=1, maximum=65535)
        if "port" in m:
            raise ctx.key(m, "port").error('"port" is given by tcp: PORT here')
    else:
        command = S.argv(m["exec"], ctx.key(m, "exec"))
        if "port" in m:
            raise ctx.key(m, "port").error('"port" does not apply to an exec check')
    kw: Dict[str, Any] = {}
    for k in ("interval", "timeout", "start_period"):
        if k in m:
            kw[k] = S.convert(parse_duration, m[k], ctx.key(m, k))
    if kw.get("interval") == 0.0:
        raise ctx.key(m, "interval").error("expected an interval > 0")
    if "retries" in m:
        kw["retries"] = S.integer(m["retries"], ctx.key(m, "retries"), minimum=1)
    return HealthCheck(kind=kind, path=path, port=port, command=tuple(command), **kw)


def _volumes(raw: Any, ctx: Ctx) -> Tuple[Volume, ...]:
    seq = S.items(raw, ctx)
    out: List[Volume] = []
    for i, v in enumerate(seq):
        name, dest, ro, shared = S.convert(parse_volume, v, ctx.item(seq, i))
        if any(x.dest == dest for x in out):
            raise ctx.item(seq, i).error(f'"{dest}" mounted twice')
        out.append(Volume(name, dest, ro, shared))
    return tuple(out)


def _secrets(raw: Any, ctx: Ctx, directory: str) -> Tuple[Secret, ...]:
    if not isinstance(raw, dict):
        raise ctx.error(f"expected a mapping NAME: {{env: VAR}} | {{file: PATH}}, got {S.describe(raw)}")
    out: List[Secret] = []
    for name, spec in raw.items():
        sctx = ctx.key(raw, name)
        if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", name):
            raise sctx.error(f'expected a secret name, got "{name}"')
        m = S.mapping(spec, sctx, ("env", "file", "dest", "tmpfs"))
        tmpfs = S.boolean(m["tmpfs"], sctx.key(m, "tmpfs")) if "tmpfs" in m else False
        which = S.one_of_keys(m, sctx, ("env", "file"))
        dest = S.convert(normalise_dest, S.string(m["dest"], sctx.key(m, "dest")), sctx.key(m, "dest")) \
            if "dest" in m else f"/run/secrets/{name}"
        if any(s.dest == dest for s in out):
            raise sctx.error(f'secret destination "{dest}" used twice')
        if which == "env":
            var = S.convert(_env_key, S.string(m["env"], sctx.key(m, "env")), sctx.key(m, "env"))
            out.append(Secret(name=name, dest=dest, env=var, tmpfs=tmpfs, source_file=sctx.file,
                              source_line=sctx.line))
        else:
            p = os.path.expanduser(S.string(m["file"], sctx.key(m, "file")))
            p = os.path.normpath(os.path.join(directory, p))
            out.append(Secret(name=name, dest=dest, file=p, tmpfs=tmpfs, source_file=sctx.file,
                              source_line=sctx.line))
    return tuple(out)


def _resources(raw: Any, ctx: Ctx) -> Resources:
    m = S.mapping(raw, ctx, ("memory", "pids", "cpus"))
    return Resources(
        memory=S.convert(parse_size, m["memory"], ctx.key(m, "memory")) if "memory" in m else None,
        pids=S.integer(m["pids"], ctx.key(m, "pids"), minimum=1) if "pids" in m else None,
        cpus=_cpus(m["cpus"], ctx.key(m, "cpus")) if "cpus" in m else None)


def _cpus(raw: Any, ctx: Ctx) -> float:
    value = S.number(raw, ctx)
    if value <= 0:
        raise ctx.error(f"expected a number of CPUs > 0, got {raw}")
    return value


def _strategy(raw: Any, ctx: Ctx) -> Strategy:
    m = S.mapping(raw, ctx, ("canary", "max_parallel", "monitor", "on_failure"))
    kw: Dict[str, Any] = {}
    if "canary" in m:
        kw["canary"] = S.integer(m["canary"], ctx.key(m, "canary"), minimum=0)
    if "max_parallel" in m:
        n, pct = S.convert(parse_percent_or_int, m["max_parallel"], ctx.key(m, "max_parallel"))
        kw["max_parallel"], kw["max_parallel_percent"] = n, pct
    if "monitor" in m:
        kw["monitor"] = S.convert(parse_duration, m["monitor"], ctx.key(m, "monitor"))
    if "on_failure" in m:
        v = m["on_failure"]
        if v not in ("halt", "rollback"):
            guess = S.did_you_mean(str(v), ("halt", "rollback"))
            raise ctx.key(m, "on_failure").error(
                f'expected halt or rollback, got {S.describe(v)}', hint=f'did you mean "{guess}"?' if guess else None)
        kw["on_failure"] = v
    return Strategy(**kw)


def _check_ports(services: Mapping[str, Service]) -> None:
    """Two services may not publish the same host port on hosts they could share."""
    seen: Dict[Tuple[int, str], Service] = {}
    for svc in services.values():
        for i, p in enumerate(svc.deploy.ports):
            other = seen.get((p.host, p.protocol))
            if other is not None and _may_overlap(other.deploy.hosts, svc.deploy.hosts):
                raise ManifestError(
                    f"host port {p.host}/{p.protocol} is already published by service "
                    f'"{other.name}" ({other.file})', file=svc.file, line=svc.line,
                    path=("services", svc.name, "deploy", "ports", i))
            seen[(p.host, p.protocol)] = svc


def _may_overlap(a: HostSelector, b: HostSelector) -> bool:
    if a.kind == "names" and b.kind == "names":
        return bool(set(a.names) & set(b.names))
    if a.kind == "labels" and b.kind == "labels":
        return all(b.labels.get(k, v) == v for k, v in a.labels.items())
    return True
