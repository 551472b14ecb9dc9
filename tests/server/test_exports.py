"""Exports per criterion (issue 13, defect 3), on SQLite and PostgreSQL: a project
with two criteria ranked in opposite orders exports pairs and consensus one
criterion at a time; no file holds the same two responses in both orders."""

from __future__ import annotations

import json

import pytest

from alignloop.cli import main
from alignloop.io import read_records
from alignloop.server import service
from alignloop.server.errors import Invalid

CRITERIA = ("helpfulness", "harmlessness")


@pytest.fixture
def ranked(as_labeler, new_project):
    """Two labelers rank every prompt best-first by helpfulness and worst-first by
    harmlessness: pairs of both criteria in one file would contradict each other."""
    new_project(n_prompts=3, overlap=2, criteria=CRITERIA)
    for name in ("ann", "bob"):
        api = as_labeler(name, acknowledge="demo")
        while (r := api.next()).status_code == 200:
            task = r.json()
            best_first = sorted(task["completions"], key=lambda c: c["text"])
            for criterion, order in zip(CRITERIA, (best_first, best_first[::-1]), strict=True):
                body = {"criterion": criterion}
                r = api.rank(task["assignment_id"], [[c["id"]] for c in order], **body)
                assert r.status_code == 201, r.text
    return as_labeler("boss", admin=True)


def no_pair_in_both_orders(pairs: list[dict]) -> None:
    seen = {(p["prompt_id"], p["chosen_id"], p["rejected_id"]) for p in pairs}
    for prompt, chosen, rejected in seen:
        assert (prompt, rejected, chosen) not in seen, (prompt, chosen, rejected)


def test_api_exports_pairs_and_consensus_one_criterion_at_a_time(ranked):
    boss = ranked
    url = "/api/v1/admin/projects/demo/export"
    for what in ("pairs", "consensus"):
        r = boss.get(url, params={"what": what})
        assert r.status_code == 422
        assert "give --criterion helpfulness" in r.text and "harmlessness" in r.text
    for criterion in CRITERIA:
        r = boss.get(url, params={"what": "pairs", "criterion": criterion})
        assert r.status_code == 200
        assert f'filename="demo-pairs-{criterion}.jsonl"' in r.headers["content-disposition"]
        pairs = [json.loads(line) for line in r.text.splitlines()]
        assert len(pairs) == 3 * 2 * 3  # prompts x labelers x pairs of 3 completions
        assert {p["criterion"] for p in pairs} == {criterion}
        no_pair_in_both_orders(pairs)
        r = boss.get(url, params={"what": "consensus", "criterion": criterion})
        assert len(r.text.splitlines()) == 3
    rankings = boss.get(url, params={"what": "rankings"}).text.splitlines()
    assert len(rankings) == 12  # rankings carry their criterion: one file is fine
    assert boss.get(url, params={"what": "pairs", "criterion": "humor"}).status_code == 422


def test_cli_export_needs_a_criterion_for_pairs_of_several(db, ranked, tmp_path, capsys):
    url = db.url.render_as_string(hide_password=False)
    base = ["project", "export", "--db", url, "--name", "demo", "--what", "pairs"]
    out = tmp_path / "pairs.jsonl"
    assert main([*base, "--out", str(out)]) == 2
    assert "give --criterion helpfulness" in capsys.readouterr().err
    assert not out.exists()
    for criterion in CRITERIA:
        out = tmp_path / f"pairs-{criterion}.jsonl"
        assert main([*base, "--criterion", criterion, "--out", str(out)]) == 0
        pairs = [p.to_dict() for p in read_records(out, "comparison")]
        assert len(pairs) == 18
        no_pair_in_both_orders(pairs)


def test_a_single_criterion_project_needs_no_criterion(db, new_project):
    new_project()
    assert service.export_project(db, "demo", "pairs") == []
    with pytest.raises(Invalid, match="not one of"):
        service.export_project(db, "demo", "pairs", criterion="harmlessness")
