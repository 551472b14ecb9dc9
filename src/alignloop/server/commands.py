"""`alignloop serve | db upgrade | project ... | labeler ...`: the labeling server's
subcommands, added to the console script by `add_server_commands`.

Each handler imports the web stack (FastAPI, SQLAlchemy) when it runs, so the rest of
the CLI works without the `server` extra. `--db` defaults to $ALIGNLOOP_DB, then to
`alignloop.db` in the current directory; a PostgreSQL password belongs in
$ALIGNLOOP_DB (or ~/.pgpass), not on the command line where `ps` shows it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from alignloop.config import ConfigError

__all__ = ["add_server_commands"]

DB_HELP = (
    "database URL: sqlite:///FILE or postgresql://USER@HOST/DB "
    "(default: $ALIGNLOOP_DB, else sqlite:///alignloop.db)"
)


def _need_server_extra() -> None:
    missing = []
    for module in ("fastapi", "sqlalchemy", "alembic", "uvicorn", "jinja2", "markdown_it"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ConfigError(
            f"the labeling server needs {', '.join(missing)}: pip install 'alignloop[server]'"
        )


def _default_url() -> str:
    from alignloop.server.db import DEFAULT_DB

    return os.environ.get("ALIGNLOOP_DB") or DEFAULT_DB


def _open(args: argparse.Namespace, *, migrate: bool = True):
    """The database of `--db`, migrated to the newest schema (or, with
    `migrate=False`, checked to be at it)."""
    _need_server_extra()
    from sqlalchemy.exc import OperationalError

    from alignloop.server.db import display_url, open_database

    url = args.db or _default_url()
    try:
        return open_database(url, migrate=migrate)
    except OperationalError as e:
        raise ConfigError(f"cannot open {display_url(url)}: {e.orig}") from None


def _read_text(path: str) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None


# --- handlers ----------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    db = _open(args, migrate=not args.no_migrate)
    import uvicorn

    from alignloop.server.app import create_app
    from alignloop.server.db import display_url

    if not 0 < args.max_body_mb < 1e6:
        raise ConfigError(f"--max-body-mb must be positive, got {args.max_body_mb}")
    app = create_app(
        db,
        secure_cookies=args.secure_cookies,
        hsts=args.proxy_headers,
        max_body_bytes=int(args.max_body_mb * 1024 * 1024),
    )
    print(
        f"labeling server on http://{args.host}:{args.port} over {display_url(db.url)}",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        proxy_headers=args.proxy_headers,
        timeout_graceful_shutdown=5,
    )
    return 0


def _db_upgrade(args: argparse.Namespace) -> int:
    _need_server_extra()
    from sqlalchemy.exc import OperationalError

    from alignloop.server.db import Database, display_url, upgrade

    db = Database(args.db or _default_url())
    try:
        before, after = upgrade(db, args.revision)
    except OperationalError as e:
        raise ConfigError(f"cannot open {display_url(db.url)}: {e.orig}") from None
    state = "already at" if before == after else f"upgraded from {before or 'empty'} to"
    print(f"{display_url(db.url)}: {state} revision {after}")
    return 0


def _project_create(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import DBAPIError

    from alignloop.io import read_records

    if not (math.isfinite(args.assignment_ttl) and 0 < args.assignment_ttl * 60 < 2**31):
        raise ConfigError(
            f"--assignment-ttl must be a positive number of minutes (under 35 million), "
            f"got {args.assignment_ttl}"
        )
    if args.guidelines is None and not args.personal:
        raise ConfigError(
            "--guidelines FILE is needed (only a --personal project may go without: "
            "each labeler ranks by their own preferences)"
        )
    guidelines = _read_text(args.guidelines) if args.guidelines is not None else ""
    prompts = read_records(args.prompts, "prompt")
    completions = read_records(args.completions, "completion")
    gold = read_records(args.gold, "ranking") if args.gold else []
    db = _open(args)
    try:
        summary = _create(db, args, guidelines, prompts, completions, gold)
    except DBAPIError as e:  # what the checks did not foresee; nothing was stored
        raise ConfigError(f"the database refused the project: {str(e.orig).strip()}") from None
    if summary.personal:
        how = "by every labeler for themself (personal: their own preferences)"
    else:
        how = (
            f"with overlap {summary.overlap}, "
            f"{summary.gold_prompts} gold prompts (rate {summary.gold_rate})"
        )
    print(
        f"project {summary.name!r}: {summary.prompts} prompts to rank by "
        f"{', '.join(summary.criteria)} {how}, "
        f"{summary.completions} completions; guidelines version {summary.guidelines_version[:12]}"
    )
    return 0


def _create(db, args: argparse.Namespace, guidelines: str, prompts, completions, gold):
    from alignloop.server.service import create_project

    return create_project(
        db,
        name=args.name,
        criteria=args.criteria.split(","),
        guidelines=guidelines,
        prompts=prompts,
        completions=completions,
        overlap=args.overlap,
        gold=gold,
        gold_rate=args.gold_rate,
        assignment_ttl_s=int(args.assignment_ttl * 60),
        personal=args.personal,
    )


def _project_guidelines(args: argparse.Namespace) -> int:
    from alignloop.server.service import set_guidelines

    markdown = _read_text(args.guidelines)
    version, changed = set_guidelines(_open(args), args.name, markdown)
    if changed:
        print(
            f"guidelines of {args.name!r} are now version {version[:12]}; "
            "labelers acknowledge it before their next task"
        )
    else:
        print(f"guidelines of {args.name!r} unchanged (version {version[:12]})")
    return 0


def _project_export(args: argparse.Namespace) -> int:
    from alignloop.io import write_records
    from alignloop.server.service import export_project

    records = export_project(
        _open(args),
        args.name,
        args.what,
        include_gold=args.include_gold,
        criterion=args.criterion,
        labeler=args.labeler,
    )
    n = write_records(args.out, records)
    of = "" if args.labeler is None else f" of {args.labeler!r}"
    print(f"wrote {n} {args.what} records{of} to {args.out}")
    return 0


def _project_status(args: argparse.Namespace) -> int:
    from alignloop.server.service import project_status

    print(json.dumps(project_status(_open(args), args.name), indent=2, ensure_ascii=False))
    return 0


def _labeler_add(args: argparse.Namespace) -> int:
    from alignloop.server.service import add_labeler

    token = add_labeler(_open(args), args.name, admin=args.admin)
    role = "admin" if args.admin else "labeler"
    print(
        f"{role} {args.name.strip()!r} added; their login token (shown once, stored hashed):",
        file=sys.stderr,
    )
    print(token)
    return 0


def _labeler_list(args: argparse.Namespace) -> int:
    from alignloop.server.service import list_labelers

    for lab in list_labelers(_open(args)):
        role = "admin" if lab["is_admin"] else "labeler"
        state = "active" if lab["active"] else "deactivated"
        print(f"{lab['name']}\t{role}\t{state}\tsince {lab['created_at']}")
    return 0


def _labeler_deactivate(args: argparse.Namespace) -> int:
    from alignloop.server.service import deactivate_labeler

    deactivate_labeler(_open(args), args.name)
    print(f"{args.name!r} deactivated: their token and sessions no longer work")
    return 0


def _labeler_reactivate(args: argparse.Namespace) -> int:
    from alignloop.server.service import reactivate_labeler

    reactivate_labeler(_open(args), args.name)
    print(f"{args.name!r} reactivated: their token works again")
    return 0


def _labeler_rotate_token(args: argparse.Namespace) -> int:
    from alignloop.server.service import rotate_token

    token = rotate_token(_open(args), args.name)
    print(
        f"new login token of {args.name!r} (shown once; the old one and their sessions "
        "no longer work):",
        file=sys.stderr,
    )
    print(token)
    return 0


# --- the parser --------------------------------------------------------------------


def _needs_extra(handler):
    """The handler, run only once the server's extra is known to be installed."""

    def run(args: argparse.Namespace) -> int:
        _need_server_extra()
        return handler(args)

    return run


def add_server_commands(sub, command, group) -> None:
    """Add the server's subcommands to the console script's subparsers `sub`, with
    cli.py's `_command(sub, name, handler, help)` and `_group(sub, name, help)`."""
    plain_command = command

    def command(parent, name, handler, help):  # cli.py's signature
        return plain_command(parent, name, _needs_extra(handler), help)

    def db_option(p: argparse.ArgumentParser) -> None:
        p.add_argument("--db", default=None, help=DB_HELP)

    p = command(sub, "serve", _serve, "Run the labeling server (migrates the database first).")
    db_option(p)
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    p.add_argument(
        "--no-migrate", action="store_true", help="fail instead of migrating an old schema"
    )
    p.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-* from a reverse proxy (for https and client addresses); "
        "sends Strict-Transport-Security",
    )
    p.add_argument(
        "--max-body-mb",
        type=float,
        default=64.0,
        help="largest request body of a signed-in client, in MiB (413 beyond it; "
        "64 KiB without a token) (default: %(default)s)",
    )
    p.add_argument(
        "--secure-cookies",
        action="store_true",
        help="mark cookies Secure (behind a TLS-terminating proxy)",
    )

    dbg = group(sub, "db", "The labeling server's database.")
    p = command(dbg, "upgrade", _db_upgrade, "Run the schema migrations (Alembic).")
    db_option(p)
    p.add_argument("--revision", default="head", help="target revision (default: head)")

    proj = group(sub, "project", "Labeling projects: create, status, export.")
    p = command(proj, "create", _project_create, "A project from prompts and completions files.")
    db_option(p)
    p.add_argument("--name", required=True, help="project name")
    p.add_argument(
        "--criteria",
        required=True,
        help="comma-separated criteria, one ranking each (e.g. helpfulness,harmlessness)",
    )
    p.add_argument(
        "--guidelines",
        help="the labelers' guidelines (Markdown file); optional with --personal",
    )
    p.add_argument("--prompts", required=True, help="prompts file (.jsonl or .parquet)")
    p.add_argument(
        "--completions",
        required=True,
        help="completions file, e.g. from `alignloop generate` or `world candidates`",
    )
    p.add_argument(
        "--overlap",
        type=int,
        default=None,
        help="distinct labelers per prompt (default: 3; none with --personal)",
    )
    p.add_argument(
        "--gold", help="rankings file of gold prompts (known rankings) to score labelers"
    )
    p.add_argument(
        "--gold-rate",
        type=float,
        default=None,
        help="share of a labeler's tasks that are gold (default 0.1 with --gold)",
    )
    p.add_argument(
        "--assignment-ttl",
        type=float,
        default=60.0,
        help="minutes before a pending task returns to the pool (default: 60)",
    )
    p.add_argument(
        "--personal",
        action="store_true",
        help="my own preferences: every labeler who opens the project ranks every prompt "
        "for themself (no overlap, no gold, no agreement); `project export --labeler NAME` "
        "writes one labeler's pairs, for `alignloop personal fit --user NAME`",
    )

    p = command(proj, "guidelines", _project_guidelines, "Replace a project's guidelines.")
    db_option(p)
    p.add_argument("--name", required=True, help="project name")
    p.add_argument("--guidelines", required=True, help="the new guidelines (Markdown file)")

    p = command(proj, "export", _project_export, "Write rankings, pairs or consensus rankings.")
    db_option(p)
    p.add_argument("--name", required=True, help="project name")
    p.add_argument("--out", required=True, help="file to write (.jsonl or .parquet), atomically")
    p.add_argument(
        "--what",
        choices=("rankings", "pairs", "consensus"),
        default="rankings",
        help="rankings as given, preference pairs (for train-rm), or consensus",
    )
    p.add_argument(
        "--criterion",
        help="only this criterion; needed for pairs and consensus when the project has "
        "several (one file per criterion: pairs of two criteria may contradict each other)",
    )
    p.add_argument(
        "--include-gold", action="store_true", help="also the labelers' rankings of gold prompts"
    )
    p.add_argument(
        "--labeler",
        help="only this labeler's records (a personal project's user: the pairs that fit "
        "their weights)",
    )

    p = command(proj, "status", _project_status, "Progress, labelers, agreement, gold (JSON).")
    db_option(p)
    p.add_argument("--name", required=True, help="project name")

    _add_labeler_commands(group(sub, "labeler", "Labelers of the labeling server."), command)


def _add_labeler_commands(lab, command) -> None:
    """`alignloop labeler add | list | deactivate | reactivate | rotate-token`."""
    p = command(lab, "add", _labeler_add, "Add a labeler; prints their login token once.")
    p.add_argument("--db", default=None, help=DB_HELP)
    p.add_argument("--name", required=True, help="labeler name (unique)")
    p.add_argument("--admin", action="store_true", help="may see the admin pages and export")
    p = command(lab, "list", _labeler_list, "Every labeler: name, role, active or not.")
    p.add_argument("--db", default=None, help=DB_HELP)
    for name, handler, what in (
        ("deactivate", _labeler_deactivate, "Stop a labeler: token and sessions end at once."),
        ("reactivate", _labeler_reactivate, "Let a deactivated labeler back in (same token)."),
        ("rotate-token", _labeler_rotate_token, "A new token (printed once); the old one ends."),
    ):
        p = command(lab, name, handler, what)
        p.add_argument("--db", default=None, help=DB_HELP)
        p.add_argument("name", help="the labeler's name")
