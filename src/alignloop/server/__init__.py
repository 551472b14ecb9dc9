"""The labeling server: labelers rank completions in a browser, the rankings land in a
database and leave it in the schema's formats, ready for `alignloop train-rm`.

    db.py          engine set-up (SQLite in WAL mode, or PostgreSQL), transactions
    models.py      the tables: projects, guidelines, prompts, completions, labelers,
                   assignments, rankings, web sessions
    migrations/    Alembic migrations of those tables, shipped with the package
    security.py    tokens (random, stored as SHA-256), sessions, CSRF
    service.py     what the CLI and the admin pages do: projects, labelers, status, export
    assign.py      who ranks what: overlap, gold items, personal projects, expiry,
                   idempotent submission
    api.py         the JSON API under /api/v1 (the pages use it too)
    pages.py       the HTML pages (Jinja2 templates, static CSS and JavaScript)
    app.py         the FastAPI application
    commands.py    `alignloop serve | db | project | labeler` subcommands

Walls: nothing here imports torch or transformers; the web stack (FastAPI, SQLAlchemy)
is an optional extra (`pip install 'alignloop[server]'`) imported only by the modules
that need it, so `alignloop --help` works without it.
"""
