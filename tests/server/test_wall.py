"""Walls: the server imports neither torch nor transformers, and the rest of the CLI
works without the server's extra (FastAPI, SQLAlchemy...)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SERVER_MODULES = [
    "alignloop.server.app",
    "alignloop.server.api",
    "alignloop.server.pages",
    "alignloop.server.assign",
    "alignloop.server.service",
    "alignloop.server.db",
    "alignloop.server.models",
    "alignloop.server.commands",
    "alignloop.server.auth",
]


def run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )


def test_the_server_imports_no_torch_or_transformers():
    result = run(f"""
        import importlib, sys
        for name in {SERVER_MODULES!r}:
            importlib.import_module(name)
        from alignloop.server.app import create_app
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers"))
        print("HEAVY", heavy)
    """)
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout


def test_the_cli_works_without_the_server_extra():
    # A finder that makes the web stack look uninstalled.
    result = run("""
        import sys
        class NoWeb:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("fastapi", "sqlalchemy", "alembic", "uvicorn"):
                    raise ImportError(f"No module named {name!r}")
        sys.meta_path.insert(0, NoWeb())
        from alignloop.cli import main
        code = main(["labeler", "add", "--name", "ann"])
        print("CODE", code)
    """)
    assert "CODE 2" in result.stdout, result.stderr
    assert "pip install 'alignloop[server]'" in result.stderr
    result = subprocess.run(
        [sys.executable, "-m", "alignloop", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0 and "serve" in result.stdout and "labeler" in result.stdout
