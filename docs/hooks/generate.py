"""MkDocs hook: the reference pages are generated from the code, and every path the pages cite exists.

A page asks for generated content with a marker line:

* ``<!-- generated: settings -->`` — the ``Settings`` class (fields, environment variables, defaults,
  descriptions), from ``litellm_jobs_plugin.settings``;
* ``<!-- generated: http-api -->`` — every route of the plugin's own APIRouter, from the OpenAPI schema
  FastAPI builds for it (also written to the site as ``openapi.json``);
* ``<!-- generated: cli -->`` — the ``litellm-jobs`` commands, their arguments and options, from the Typer app;
* ``<!-- generated: errors -->`` — every error the plugin answers with (status, type, meaning), from ``errors.py``.

Checks (each one fails ``mkdocs build --strict``):

* a path in backticks that starts with ``src/``, ``tests/``, ``deploy/``, ``bench/``, ``scripts/``,
  ``docs/`` or ``prisma/`` must exist; ``path.py::test_name`` must name a function defined in that file;
* every route of the schema is described on the HTTP API page's overview table, and that table names
  no route the schema lacks;
* every ``JOBS_*`` variable a page mentions is a real setting;
* README.md's relative links point at files that exist.
"""

from __future__ import annotations

import json
import logging
import os
import re
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
CITED_PATH = re.compile(r"`((?:src|tests|deploy|bench|scripts|docs|prisma)/[\w./-]*[\w/])((?:::[\w\[\]|.-]+)*)`")
ROUTE_ROW = re.compile(r"^\|\s*`(GET|POST|PUT|DELETE|PATCH) (/[^`]+)`", re.MULTILINE)
ENV_VAR = re.compile(r"\bJOBS_[A-Z_]+[A-Z]\b")
#: Variables that are not settings of the plugin but appear in the pages (the tests' own).
NOT_SETTINGS = {
    "JOBS_TEST_DATABASE_URL",
    "JOBS_TEST_REDIS_URL",
    "JOBS_TEST_LITELLM_MATRIX",
    "JOBS_TEST_DOCS_SCREENSHOTS",
    "JOBS_TEST_CREDIT_MODE",
    "JOBS_TEST_CREDIT_MODES",
    "JOBS_TEST_WORKERS",
}

log = logging.getLogger("mkdocs.hooks.generate")

#: Descriptions of the settings whose field has none in settings.py (kept here, checked against the class).
EXTRA_DESCRIPTIONS = {
    "idle_timeout_s": "A job with no call started or finished for this long is expired by the reaper "
    "(its hold released, nothing charged).",
    "untagged": "What a call naming no job_id is: `single_call_job` (its own job, charged when it succeeds), "
    "`allow` (recorded with no job, nothing charged) or `reject` (400 job_id_required).",
    "default_job_type": "The type of a job whose first call names none.",
    "default_price": "Credits a completed job costs when its type has no price of its own.",
    "buffer_max": "Records the in-memory buffer holds before a logging callback has to wait.",
    "batch_size": "Records per write transaction.",
    "enqueue_timeout_s": "How long a logging callback waits on a full buffer before the record is dropped "
    "(and counted: writer.dropped in /api/jobs/health must stay 0).",
    "shutdown_timeout_s": "How long shutdown waits for the buffer to be written.",
    "pool_min_size": "Smallest PostgreSQL pool per proxy worker.",
    "pool_max_size": "Largest PostgreSQL pool per proxy worker (besides it, each worker holds one connection "
    "for the writer and one for the store watch).",
    "startup_timeout_s": "How long start-up retries the database.",
    "redis_prefix": "Prefix of every Redis key the plugin writes.",
}


def _warn(message: str) -> None:
    # In strict mode MkDocs counts warnings of its loggers and fails the build on any.
    log.warning(message)


# -- settings -------------------------------------------------------------------------------------


def _default_text(field: Any) -> str:
    from pydantic_core import PydanticUndefined

    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if hasattr(value, "value"):  # an enum
        value = value.value
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{json.dumps(value)}`"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_markdown() -> str:
    from pydantic import AliasChoices

    from litellm_jobs_plugin.settings import Settings

    prefix = Settings.model_config.get("env_prefix", "")
    unknown = set(EXTRA_DESCRIPTIONS) - set(Settings.model_fields)
    if unknown:
        _warn(f"docs/hooks/generate.py describes settings that do not exist: {sorted(unknown)}")
    rows = ["| variable | default | what it does |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names = [str(a) for a in alias.choices] if isinstance(alias, AliasChoices) else [f"{prefix}{name}".upper()]
        description = field.description or EXTRA_DESCRIPTIONS.get(name)
        if not description:
            _warn(f"setting {name} has no description (settings.py or docs/hooks/generate.py)")
            description = ""
        elif field.description and name in EXTRA_DESCRIPTIONS:
            _warn(f"setting {name} is described in settings.py now: drop it from docs/hooks/generate.py")
        variable = "`" + "`, else `".join(names) + "`"
        rows.append(f"| {variable} | {_default_text(field)} | {_cell(description)} |")
    return "\n".join(rows) + "\n"


@cache
def setting_names() -> frozenset[str]:
    from pydantic import AliasChoices

    from litellm_jobs_plugin.settings import Settings

    names: set[str] = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(str(a) for a in alias.choices)
        names.add(f"JOBS_{name.upper()}")
    return frozenset(names)


# -- the HTTP API, from the routes' OpenAPI schema --------------------------------------------------


@cache
def openapi_schema() -> dict[str, Any]:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # importing LiteLLM must not reach the network
    from fastapi import FastAPI

    from litellm_jobs_plugin import __version__
    from litellm_jobs_plugin.hooks import JobsPlugin
    from litellm_jobs_plugin.routes import build_router

    app = FastAPI(title="litellm-jobs-plugin routes", version=__version__)
    app.include_router(build_router(JobsPlugin()))
    schema: dict[str, Any] = app.openapi()
    return schema


def _type_of(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        kinds = [_type_of(s) for s in schema["anyOf"] if s.get("type") != "null"]
        text = " or ".join(dict.fromkeys(kinds))
        return text or "null"
    if "enum" in schema:
        return " \\| ".join(f"`{v}`" for v in schema["enum"])
    kind = schema.get("type")
    if kind == "array":
        return f"array of {_type_of(schema.get('items', {}))}"
    if "$ref" in schema:
        return schema["$ref"].rsplit("/", 1)[-1]
    return str(kind or "any")


def _limits(schema: dict[str, Any]) -> str:
    parts = []
    for sub in [schema, *schema.get("anyOf", [])]:
        for key, label in (
            ("minimum", "≥"),
            ("exclusiveMinimum", ">"),
            ("maximum", "≤"),
            ("minLength", "length ≥"),
            ("maxLength", "length ≤"),
        ):
            if key in sub:
                value = sub[key]
                value = int(value) if isinstance(value, float) and value.is_integer() else value
                parts.append(f"{label} {value}")
        if "default" in sub and sub is schema:
            parts.append(f"default `{json.dumps(sub['default'])}`")
    return ", ".join(dict.fromkeys(parts))


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _anchor(method: str, path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", f"{method} {path}".lower()).strip("-")


def http_api_markdown() -> str:
    schema = openapi_schema()
    out: list[str] = []
    for path, operations in schema["paths"].items():
        for method, op in operations.items():
            out.append(f"### `{method.upper()} {path}` {{ #{_anchor(method, path)} }}\n")
            out.append(f"**{op.get('summary', '')}**" + ("" if op.get("security") else " · no key needed") + "\n")
            if op.get("description"):
                out.append(" ".join(op["description"].replace("``", "`").split()) + "\n")
            params = op.get("parameters", [])
            if params:
                out.append("| parameter | in | type | required | limits |\n|---|---|---|---|---|")
                for p in params:
                    out.append(
                        f"| `{p['name']}` | {p['in']} | {_type_of(p.get('schema', {}))} | "
                        f"{'yes' if p.get('required') else 'no'} | {_limits(p.get('schema', {}))} |"
                    )
                out.append("")
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
            if body and body.get("properties"):
                required = set(body.get("required", []))
                out.append("| body field | type | required | limits |\n|---|---|---|---|")
                for name, prop in body["properties"].items():
                    out.append(
                        f"| `{name}` | {_type_of(prop)} | {'yes' if name in required else 'no'} | {_limits(prop)} |"
                    )
                out.append("")
            statuses = [s for s in op.get("responses", {}) if s != "422"]
            if statuses:
                out.append("Success: " + ", ".join(f"`{s}`" for s in statuses) + "\n")
    return "\n".join(out)


def check_route_table(markdown: str) -> None:
    documented = {(m, p) for m, p in ROUTE_ROW.findall(markdown)}
    actual = {(m.upper(), p) for p, ops in openapi_schema()["paths"].items() for m in ops}
    for method, path in sorted(actual - documented):
        _warn(f"docs/http-api.md: the overview table does not describe {method} {path}")
    for method, path in sorted(documented - actual):
        _warn(f"docs/http-api.md: the overview table describes {method} {path}, which the routes do not serve")


# -- the CLI, from the Typer app ----------------------------------------------------------------------


def cli_markdown() -> str:
    import typer

    from litellm_jobs_plugin.cli import app

    root = typer.main.get_command(app)  # Typer's own click: duck-typed below
    out: list[str] = []

    def walk(command: Any, words: list[str]) -> None:
        if hasattr(command, "commands"):
            for name, sub in command.commands.items():
                if not sub.hidden:
                    walk(sub, [*words, name])
            return
        ctx = command.context_class(command, info_name=" ".join(words))
        out.append(f"### `{' '.join(words)}`\n")
        help_text = (command.help or "").split("\b")[0].strip()
        if help_text:
            out.append(" ".join(help_text.split()) + "\n")
        out.append(f"```text\n{command.get_usage(ctx).removeprefix('Usage: ')}\n```\n")
        rows = []
        for param in command.params:
            if param.name == "help":
                continue
            if param.param_type_name == "argument":
                label = f"`{(param.metavar or param.name or '').upper()}`"
                what = getattr(param, "help", None) or ""
            else:
                label = ", ".join(f"`{o}`" for o in [*param.opts, *param.secondary_opts])
                what = param.help or ""
                default = param.default
                if default not in (None, False, (), []) and not callable(default) and not param.is_flag:
                    what += f" (default `{default}`)"
            rows.append(f"| {label} | {_cell(what)} |")
        if rows:
            out.append("| argument or option | what |\n|---|---|\n" + "\n".join(rows) + "\n")

    walk(root, ["litellm-jobs"])
    return "\n".join(out)


# -- the errors, from errors.py -------------------------------------------------------------------------


def errors_markdown() -> str:
    from litellm_jobs_plugin import errors

    rows = ["| status | `type` | meaning |", "|---|---|---|"]
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.JobsError)]
    for cls in sorted((c for c in classes if c is not errors.JobsError), key=lambda c: (c.status, c.type)):
        rows.append(f"| {cls.status} | `{cls.type}` | {_cell((cls.__doc__ or '').strip())} |")
    return "\n".join(rows) + "\n"


# -- checks over every page ----------------------------------------------------------------------------


def check_cited_paths(markdown: str, where: str) -> None:
    for path, names in CITED_PATH.findall(markdown):
        target = ROOT / path
        if not target.exists():
            _warn(f"{where}: cites {path}, which does not exist")
            continue
        if names:
            text = target.read_text(errors="replace")
            for name in names.strip(":").split("::"):
                bare = name.split("[", 1)[0]
                if not re.search(rf"^\s*(async\s+)?def {re.escape(bare)}\(|^class {re.escape(bare)}\b", text, re.M):
                    _warn(f"{where}: cites {path}::{bare}, which that file does not define")


def check_env_vars(markdown: str, where: str) -> None:
    for name in sorted(set(ENV_VAR.findall(markdown)) - setting_names() - NOT_SETTINGS):
        _warn(f"{where}: mentions {name}, which is not a setting")


def check_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (ROOT / target).exists():
            _warn(f"README.md links to {target}, which does not exist")
    check_cited_paths(readme, "README.md")
    check_env_vars(readme, "README.md")


# -- MkDocs events -------------------------------------------------------------------------------------

GENERATORS = {
    "settings": settings_markdown,
    "http-api": http_api_markdown,
    "cli": cli_markdown,
    "errors": errors_markdown,
}


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    where = f"docs/{page.file.src_path}"
    check_cited_paths(markdown, where)
    check_env_vars(markdown, where)
    if page.file.src_path == "http-api.md":
        check_route_table(markdown)

    def generate(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            _warn(f"{where}: unknown generated block {name!r}")
            return ""
        return GENERATORS[name]()

    return MARKER.sub(generate, markdown)


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "openapi.json", content=json.dumps(openapi_schema(), indent=2) + "\n"))
    return files


def on_post_build(config: Any) -> None:
    check_readme()
