"""`alignloop serve | db upgrade | project ... | labeler add` through `alignloop.cli.main`:
what they print, the files they write, and their errors (exit status 2, naming the
file and line, never a password)."""

from __future__ import annotations

import json

import pytest

from alignloop.cli import main
from alignloop.io import read_records, write_records
from alignloop.schema import Completion, Prompt, Ranking
from alignloop.server import assign, service
from alignloop.server.db import head_revision, open_database


@pytest.fixture
def files(tmp_path, records):
    prompts, completions = records(4, 3)
    paths = {
        "prompts": tmp_path / "prompts.jsonl",
        "completions": tmp_path / "completions.jsonl",
        "guidelines": tmp_path / "guidelines.md",
        "gold": tmp_path / "gold.jsonl",
    }
    write_records(paths["prompts"], prompts)
    write_records(paths["completions"], completions)
    paths["guidelines"].write_text("# Rank by helpfulness\n")
    write_records(
        paths["gold"],
        [
            Ranking(
                prompt_id="p3",
                labeler="expert",
                criterion="helpfulness",
                ranking=[["p3-0"], ["p3-1", "p3-2"]],
            )
        ],
    )
    return paths


def create_args(db_url: str, files, *extra: str) -> list[str]:
    return [
        "project",
        "create",
        "--db",
        db_url,
        "--name",
        "demo",
        "--criteria",
        "helpfulness",
        "--guidelines",
        str(files["guidelines"]),
        "--prompts",
        str(files["prompts"]),
        "--completions",
        str(files["completions"]),
        "--overlap",
        "2",
        *extra,
    ]


def test_create_add_rank_status_export(tmp_path, files, capsys):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"upgraded from empty to revision {head_revision()}" in capsys.readouterr().out
    assert main(["db", "upgrade", "--db", url]) == 0
    assert f"already at revision {head_revision()}" in capsys.readouterr().out

    assert main(create_args(url, files, "--gold", str(files["gold"]), "--gold-rate", "0.2")) == 0
    out = capsys.readouterr().out
    assert "3 prompts to rank by helpfulness with overlap 2, 1 gold prompts (rate 0.2)" in out

    tokens = {}
    for name in ("ann", "bob"):
        assert main(["labeler", "add", "--db", url, "--name", name]) == 0
        captured = capsys.readouterr()
        tokens[name] = captured.out.strip()
        assert tokens[name].startswith("alt_") and "shown once" in captured.err

    db = open_database(url)
    for labeler_id in (1, 2):
        version = assign.guidelines_for(db, labeler_id, "demo")["version"]
        assign.acknowledge(db, labeler_id, "demo", version)
        while (task := assign.next_task(db, labeler_id, "demo")) is not None:
            ranking = [[c["id"]] for c in sorted(task["completions"], key=lambda c: c["text"])]
            assign.submit_ranking(
                db, labeler_id, task["assignment_id"], assign.Submission(None, ranking)
            )

    assert main(["project", "status", "--db", url, "--name", "demo"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["progress"]["complete_prompts"] == 3
    assert set(status["labelers"]) == {"ann", "bob"}
    assert status["agreement"]["pairwise_agreement"] == 1.0

    for what, kind, n in (
        ("rankings", Ranking, 6),
        ("pairs", "comparison", 18),
        ("consensus", Ranking, 3),
    ):
        out_file = tmp_path / f"{what}.jsonl"
        assert (
            main(
                [
                    "project",
                    "export",
                    "--db",
                    url,
                    "--name",
                    "demo",
                    "--what",
                    what,
                    "--out",
                    str(out_file),
                ]
            )
            == 0
        )
        assert f"wrote {n} {what} records" in capsys.readouterr().out
        assert len(read_records(out_file, kind)) == n
    pairs = read_records(tmp_path / "pairs.jsonl", "comparison")
    assert all(p.chosen_id.endswith("-0") or p.rejected_id.endswith("-2") for p in pairs)


def test_errors_name_the_problem(tmp_path, files, capsys):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert main(create_args(url, files)) == 0
    capsys.readouterr()
    assert main(create_args(url, files)) == 2
    assert "error: a project named 'demo' already exists" in capsys.readouterr().err

    lonely = tmp_path / "lonely.jsonl"
    write_records(
        lonely,
        [
            Completion(id="x-0", prompt_id="nope", completion="hi"),
            *read_records(files["completions"], "completion"),
        ],
    )
    args = create_args(url, {**files, "completions": lonely})
    args[args.index("demo")] = "other"
    assert main(args) == 2
    assert f"{lonely}:1: field 'prompt_id': no prompt with id 'nope'" in capsys.readouterr().err

    one = tmp_path / "one.jsonl"
    write_records(
        one, [Prompt(id="solo", prompt="alone"), *read_records(files["prompts"], "prompt")]
    )
    solo = tmp_path / "solo.jsonl"
    write_records(
        solo,
        [
            Completion(id="s", prompt_id="solo", completion="only one"),
            *read_records(files["completions"], "completion"),
        ],
    )
    args = create_args(url, {**files, "prompts": one, "completions": solo})
    args[args.index("demo")] = "third"
    assert main(args) == 2
    assert f"{one}:1: prompt 'solo' has 1 completion(s); a ranking needs at least 2" in (
        capsys.readouterr().err
    )

    assert main(["project", "status", "--db", url, "--name", "missing"]) == 2
    assert "error: no project named 'missing' (projects: 'demo')" in capsys.readouterr().err
    assert main(["labeler", "add", "--db", url, "--name", "gold"]) == 2
    assert "reserved" in capsys.readouterr().err
    assert (
        main(
            [
                "project",
                "create",
                "--db",
                url,
                "--name",
                "x",
                "--criteria",
                "a,a",
                "--guidelines",
                str(files["guidelines"]),
                "--prompts",
                str(files["prompts"]),
                "--completions",
                str(files["completions"]),
            ]
        )
        == 2
    )
    assert "'a' is given twice" in capsys.readouterr().err
    assert main(create_args(url, {**files, "guidelines": tmp_path / "none.md"})) == 2
    assert "none.md: no such file" in capsys.readouterr().err


def test_a_database_password_never_appears_in_errors(capsys):
    url = "postgresql://someone:hunter2@127.0.0.1:9/labels"  # nothing listens on port 9
    assert main(["labeler", "add", "--db", url, "--name", "ann"]) == 2
    err = capsys.readouterr().err
    assert "cannot open postgresql+psycopg://someone:***@127.0.0.1:9/labels" in err
    assert "hunter2" not in err


def test_guidelines_command_sets_a_new_version(tmp_path, files, capsys):
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    assert main(create_args(url, files)) == 0
    assert (
        main(
            [
                "project",
                "guidelines",
                "--db",
                url,
                "--name",
                "demo",
                "--guidelines",
                str(files["guidelines"]),
            ]
        )
        == 0
    )
    assert "unchanged" in capsys.readouterr().out
    files["guidelines"].write_text("# Rank by helpfulness\n\nAnd be strict.\n")
    assert (
        main(
            [
                "project",
                "guidelines",
                "--db",
                url,
                "--name",
                "demo",
                "--guidelines",
                str(files["guidelines"]),
            ]
        )
        == 0
    )
    assert "labelers acknowledge it before their next task" in capsys.readouterr().out
    db = open_database(url)
    with db.read() as session:  # the new text is the current one
        project = service.get_project(session, "demo")
        assert "be strict" in service.current_guidelines(session, project).markdown


def test_project_create_errors_are_one_line_and_leave_no_project(db, tmp_path, files, capsys):
    """On SQLite and PostgreSQL: a bad guidelines file, an overlap or TTL no column
    holds, ids and names longer than the tables take: `error: ...`, exit 2, no
    traceback, and nothing stored."""
    url = db.url.render_as_string(hide_password=False)
    latin1 = tmp_path / "latin1.md"
    latin1.write_bytes("# R\u00e8gles\n".encode("latin-1"))
    long_ids = tmp_path / "long.jsonl"
    write_records(
        long_ids, [Prompt(id="p" * 250, prompt="hi"), *read_records(files["prompts"], "prompt")]
    )
    cases = [
        (create_args(url, {**files, "guidelines": latin1}), "latin1.md: not UTF-8 text"),
        (create_args(url, files, "--overlap", "99999999999999999999"), "--overlap must be in"),
        (create_args(url, files, "--assignment-ttl", "inf"), "--assignment-ttl must be"),
        (create_args(url, files, "--assignment-ttl", "nan"), "--assignment-ttl must be"),
        (create_args(url, {**files, "prompts": long_ids}), "field 'id' is 250 characters long"),
    ]
    name_args = create_args(url, files)
    name_args[name_args.index("demo")] = "n" * 250
    cases.append((name_args, "at most 200"))
    for args, expected in cases:
        assert main(args) == 2, expected
        err = capsys.readouterr().err
        assert expected in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2, err
    assert service.list_projects(db) == []
