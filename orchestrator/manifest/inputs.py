"""The inputs a manifest names but does not hold, checked before any work starts.

A manifest can be valid and still unusable: a secret's environment variable is not set, a
secret file does not exist, a ``--var`` is misspelt (and silently ignored), a copied file cannot be
read. ``check_inputs`` finds all of them at once, located like every manifest error, so that
``plan``/``apply``/``build`` stop before a build, a lab bring-up or any host contact.

``check_inputs(desired, given_vars, environ, files)`` is pure over the model, an environment
mapping and a ``LocalFiles`` view (tests pass a view of their own); ``load_checked`` is the one
call the commands make: load (collecting a problem per document instead of stopping at the first),
check, and raise every problem together.
"""
from __future__ import annotations

import os
from typing import Any, Iterator, List, Mapping, Optional, Set


from orchestrator.errors import ManifestError, ManifestErrors
from orchestrator.manifest.loader import load_desired, manifest_files
from orchestrator.manifest.model import CopyStep, Desired, Secret, Service, TemplateStep
from orchestrator.manifest.schema import did_you_mean
from orchestrator.manifest.source import has_markup, parse_documents

# names every template has without a --var (see loader: templates get ``service``)
_BUILTIN_VARS = frozenset({"service"})


class LocalFiles:
    """The few questions the check asks of this machine's files."""

    def read_text(self, path: str) -> str:
        with open(path, "r", encoding="utf-8") as fh:
            return fh.read()

    def manifests(self, directory: str) -> List[str]:
        return manifest_files(directory)

    def problem(self, path: str) -> Optional[str]:
        """None when ``path`` (a file, or a directory and everything under it) can be read."""
        if not os.path.lexists(path):
            return "does not exist"
        if not os.path.isdir(path):
            return None if os.access(path, os.R_OK) else "Permission denied"
        for dirpath, dirnames, filenames in os.walk(path):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                wanted = os.R_OK | (os.X_OK if os.path.isdir(p) else 0)
                if not os.access(p, wanted):
                    return f"{os.path.relpath(p, path)}: Permission denied"
        return None


def load_checked(directory: str, variables: Mapping[str, Any], environ: Mapping[str, str],
                 files: Optional[LocalFiles] = None, *, secrets: bool = True) -> Desired:
    """Load the manifests and check their inputs; every problem found is raised together."""
    problems: List[ManifestError] = []
    desired = load_desired(directory, variables, problems=problems)
    problems += check_inputs(desired, variables, environ, files or LocalFiles(), secrets=secrets)
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise ManifestErrors(problems, "in the manifests and their inputs (nothing was built, no host contacted)")
    from orchestrator.manifest import parse_cache
    parse_cache.flush()         # bad input writes nothing, not even its parse
    return desired


def check_inputs(desired: Desired, given_vars: Mapping[str, Any], environ: Mapping[str, str],
                 files: LocalFiles, *, secrets: bool = True) -> List[ManifestError]:
    """Every input problem of ``desired``, in manifest order, ``--var`` problems last."""
    problems: List[ManifestError] = []
    for service in desired.services.values():
        problems += _step_sources(service, files)
        if secrets:
            problems += [p for s in service.deploy.secrets for p in _secret(service, s, environ, files)]
    problems += _unknown_vars(desired, given_vars, files)
    return problems


# ---------------------------------------------------------------- secrets

def _secret(service: Service, secret: Secret, environ: Mapping[str, str], files: LocalFiles
            ) -> Iterator[ManifestError]:
    where = dict(file=secret.source_file, line=secret.source_line,
                 path=("services", service.name, "deploy", "secrets", secret.name))
    if secret.env is not None:
        if secret.env not in environ:
            yield ManifestError(f"environment variable {secret.env} is not set",
                                hint=f"provide it: export {secret.env}=...", **where)
        return
    problem = files.problem(secret.file)
    if problem is None and os.path.isdir(secret.file):
        problem = "is a directory"
    if problem is not None:
        yield ManifestError(
            f'secret file "{secret.file}": {problem}',
            hint=f"create it with the secret's value, readable only by you: "
                 f"printf %s '...' > {secret.file} && chmod 600 {secret.file}", **where)


# ---------------------------------------------------------------- copy / template sources

def _step_sources(service: Service, files: LocalFiles) -> Iterator[ManifestError]:
    for i, step in enumerate(service.image.steps):
        if not isinstance(step, (CopyStep, TemplateStep)):
            continue
        problem = files.problem(step.path)
        if problem is not None:
            yield ManifestError(f'cannot read "{step.src}": {problem}', file=service.file,
                                line=_step_line(files, service, i),
                                path=("services", service.name, "image", "steps", i, step.kind, "src"))


def _step_line(files: LocalFiles, service: Service, index: int) -> Optional[int]:
    """The line of the step's ``src`` (the model keeps only the service's first line)."""
    path = os.path.join(service.directory, os.path.basename(service.file))
    for doc in _documents(files, path):
        if doc.get("name") == service.name:
            try:
                return doc["image"]["steps"][index].line
            except (KeyError, IndexError, TypeError):
                break
    return service.line


# ---------------------------------------------------------------- --var names

def _unknown_vars(desired: Desired, given: Mapping[str, Any], files: LocalFiles) -> Iterator[ManifestError]:
    if not given:
        return
    known = _declared_and_used(desired, files)
    for name in given:
        if name in known:
            continue
        guess = did_you_mean(name, sorted(known))
        yield ManifestError(f'--var {name}: no manifest or template uses "{name}"',
                            hint=f'did you mean "{guess}"?' if guess else
                            (f"known: {', '.join(sorted(known))}" if known else "these manifests use no variables"))


def _declared_and_used(desired: Desired, files: LocalFiles) -> Set[str]:
    """Variables declared under ``vars:`` or referenced by a manifest string or template file."""
    names: Set[str] = set(_BUILTIN_VARS)
    for path in files.manifests(desired.directory):
        for doc in _documents(files, path):
            declared = doc.get("vars") if isinstance(doc, dict) else None
            if isinstance(declared, dict):
                names.update(str(k) for k in declared)
            names.update(_referenced(_strings(doc)))
    for service in desired.services.values():
        for step in service.image.steps:
            if isinstance(step, TemplateStep):
                try:
                    names.update(_referenced([files.read_text(step.path)]))
                except (OSError, UnicodeDecodeError):
                    pass                      # reported by _step_sources
    return names


def _referenced(texts) -> Set[str]:
    """The variables the texts with markup refer to (jinja2 is imported only for those)."""
    from orchestrator.manifest import plain_templates
    out: Set[str] = set()
    env = None
    for text in texts:
        if not has_markup(text):
            continue
        plain = plain_templates.names(text)
        if plain is not None:
            out |= plain
            continue
        if env is None:
            import jinja2
            from jinja2 import meta
            from orchestrator.manifest.templates import make_jinja
            env = make_jinja()
        try:
            out |= meta.find_undeclared_variables(env.parse(text))
        except jinja2.TemplateSyntaxError:
            continue                          # the loader reports it, located
    return out


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _documents(files: LocalFiles, path: str) -> List[Any]:
    """The YAML documents of a manifest file, with line numbers (empty when unreadable)."""
    try:
        return [d.data for d in parse_documents(files.read_text(path), path)]
    except (OSError, UnicodeDecodeError, ManifestError):   # yaml's errors become ManifestError
        return []
