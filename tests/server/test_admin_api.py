"""What the next issue's loop and the admin pages need from the API, on SQLite and
PostgreSQL: a project created from records (all of it or nothing), and a labeler
changing their last ranking (a new version that the exports read; the replaced one
kept; migration 0002)."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import select

from alignloop.server.models import RankingRevision, RankingRow


def project_body(name: str = "round-1", **changes) -> dict:
    prompts = [{"id": f"q{i}", "prompt": f"Question {i}?"} for i in range(3)]
    completions = [
        {"id": f"q{i}-{j}", "prompt_id": f"q{i}", "completion": f"answer {j}", "policy": "sft"}
        for i in range(3)
        for j in range(3)
    ]
    gold = [
        {
            "prompt_id": "q2",
            "labeler": "expert",
            "criterion": "helpfulness",
            "ranking": [["q2-0"], ["q2-1"], ["q2-2"]],
        }
    ]
    body = {
        "name": name,
        "criteria": ["helpfulness"],
        "guidelines": "# Rank by helpfulness\n",
        "prompts": prompts,
        "completions": completions,
        "gold": gold,
        "overlap": 2,
        "gold_rate": 0.2,
        "assignment_ttl_s": 600,
    }
    return {**body, **changes}


def test_an_admin_creates_a_project_through_the_api(as_labeler):
    boss, ann = as_labeler("boss", admin=True), as_labeler("ann")
    assert ann.post("/api/v1/admin/projects", json=project_body()).status_code == 403
    r = boss.post("/api/v1/admin/projects", json=project_body())
    assert r.status_code == 201, r.text
    summary = r.json()
    assert summary["prompts"] == 2 and summary["gold_prompts"] == 1
    assert summary["completions"] == 9 and summary["overlap"] == 2 and summary["gold_rate"] == 0.2
    assert len(summary["guidelines_version"]) == 64
    assert boss.post("/api/v1/admin/projects", json=project_body()).status_code == 409
    ann.acknowledge("round-1")
    task = ann.next("round-1").json()
    assert task["project"] == "round-1" and len(task["completions"]) == 3
    status = boss.get("/api/v1/admin/projects/round-1/status").json()
    assert status["progress"]["prompts"] == 2 and status["gold_rate"] == 0.2


def test_project_creation_errors_name_the_item_and_store_nothing(as_labeler):
    boss = as_labeler("boss", admin=True)
    body = project_body()
    body["completions"][4] = {"id": "x", "prompt_id": "q1", "completion": "hi", "rank": 1}
    r = boss.post("/api/v1/admin/projects", json=body)
    assert r.status_code == 422 and "completions[4]: completion: field 'rank'" in r.text
    body = project_body()
    body["completions"][0]["prompt_id"] = "nope"
    r = boss.post("/api/v1/admin/projects", json=body)
    assert r.status_code == 422 and "completions[0]: field 'prompt_id': no prompt" in r.text
    for changes in (
        {"name": "a/b"},
        {"criteria": ["c" * 101]},
        {"overlap": 0},
        {"overlap": 2**40},
        {"overlap": "2"},
        {"gold_rate": 1.5},
        {"criteria": []},
    ):
        r = boss.post("/api/v1/admin/projects", json=project_body(**changes))
        assert r.status_code == 422, changes
    assert boss.get("/api/v1/admin/projects").json() == []


def rank(api, task, order, **body):
    return api.rank(task["assignment_id"], [[task["completions"][i]["id"]] for i in order], **body)


def test_a_labeler_changes_their_last_ranking(db, as_labeler, new_project):
    new_project(n_prompts=3, overlap=1)
    ann, boss = as_labeler("ann", acknowledge="demo"), as_labeler("boss", admin=True)
    bob = as_labeler("bob", acknowledge="demo")
    assert ann.get("/api/v1/rankings/last").status_code == 204
    first = ann.next().json()
    assert rank(ann, first, [0, 1, 2]).status_code == 201
    task = ann.next().json()
    r = rank(ann, task, [0, 1, 2], rationale="first try")
    assert r.status_code == 201 and r.json()["version"] == 1

    last = ann.get("/api/v1/rankings/last", params={"project": "demo"}).json()
    assert last["assignment_id"] == task["assignment_id"]
    (stored,) = last["rankings"]
    assert stored["version"] == 1 and stored["rationale"] == "first try"

    url = f"/api/v1/assignments/{task['assignment_id']}/ranking"
    new = {"ranking": [[task["completions"][i]["id"]] for i in (2, 1, 0)], "rationale": "better"}
    r = ann.client.put(url, json=new, headers=ann.headers)
    assert r.status_code == 200 and r.json()["version"] == 2 and r.json()["created"] is True
    again = ann.client.put(url, json=new, headers=ann.headers)  # a retry changes nothing
    assert again.status_code == 200 and again.json()["version"] == 2
    assert again.json()["created"] is False
    r = ann.rank(task["assignment_id"], new["ranking"], rationale="better")
    assert r.status_code == 200 and r.json()["version"] == 2  # POST of the same: a retry

    # only the last ranked task; not another labeler's; a POST of a different one is 409
    old_url = f"/api/v1/assignments/{first['assignment_id']}/ranking"
    order = [[c["id"]] for c in first["completions"]][::-1]
    r = ann.client.put(old_url, json={"ranking": order}, headers=ann.headers)
    assert r.status_code == 409 and "last ranked task" in r.text
    assert bob.client.put(url, json=new, headers=bob.headers).status_code == 404
    r = rank(ann, task, [1, 0, 2])
    assert r.status_code == 409 and "PUT" in r.text

    # exports read the newest version; the history is kept
    rankings = [
        json.loads(line)
        for line in boss.get("/api/v1/admin/projects/demo/export?what=rankings").text.splitlines()
    ]
    assert len(rankings) == 2
    changed = next(r for r in rankings if r.get("rationale") == "better")
    with db.read() as session:
        row = session.scalar(select(RankingRow).where(RankingRow.rationale == "better"))
        (revision,) = session.scalars(select(RankingRevision)).all()
        assert row.version == 2 and row.groups == changed["ranking"]
        assert revision.version == 1 and revision.rationale == "first try"
        assert revision.groups == row.groups[::-1]


def test_changing_needs_a_stored_ranking_of_that_criterion(as_labeler, new_project):
    new_project(n_prompts=1, overlap=1, criteria=("helpfulness", "harmlessness"))
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    assert rank(ann, task, [0, 1, 2], criterion="helpfulness").status_code == 201
    url = f"/api/v1/assignments/{task['assignment_id']}/ranking"
    body = {"criterion": "harmlessness", "ranking": [[c["id"]] for c in task["completions"]]}
    r = ann.client.put(url, json=body, headers=ann.headers)
    assert r.status_code == 409 and "submit it first" in r.text
    body["criterion"] = "helpfulness"
    body["ranking"] = body["ranking"][::-1]
    r = ann.client.put(url, json=body, headers=ann.headers)
    assert r.status_code == 200 and r.json()["assignment_complete"] is False
    assert ann.client.put(url, json={"ranking": []}, headers=ann.headers).status_code == 422


def test_migration_0002_keeps_rankings_as_version_1(tmp_path):
    from sqlalchemy import text

    from alignloop.server.db import Database, upgrade

    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, "0001")
    with db.engine.begin() as conn:
        conn.execute(text("INSERT INTO labelers VALUES (1, 'ann', 'h', 0, 1, '2026-01-01')"))
        conn.execute(
            text("INSERT INTO projects VALUES (1, 'p', '[\"c\"]', 1, 0, 60, '2026-01-01')")
        )
        conn.execute(text("INSERT INTO prompts VALUES (1, 1, 'q', 'text', NULL, '{}', 0)"))
        conn.execute(
            text(
                "INSERT INTO assignments VALUES "
                "(1, 1, 1, 1, 0, 'done', '2026-01-01', '2026-01-01', '2026-01-01')"
            )
        )
        conn.execute(
            text("INSERT INTO rankings VALUES (1, 1, 'c', '[[\"a\"]]', 0, 0, NULL, '2026-01-01')")
        )
    assert upgrade(db, "0002") == ("0001", "0002")
    with db.read() as session:
        (row,) = session.scalars(select(RankingRow)).all()
        assert row.version == 1 and row.revisions == []


def test_a_skipped_task_is_not_the_last_ranked_one(as_labeler, new_project):
    new_project(n_prompts=2, overlap=1, criteria=("helpfulness", "harmlessness"))
    ann = as_labeler("ann", acknowledge="demo")
    first = ann.next().json()
    for criterion in ("helpfulness", "harmlessness"):
        assert rank(ann, first, [0, 1, 2], criterion=criterion).status_code == 201
    second = ann.next().json()
    assert rank(ann, second, [0, 1, 2], criterion="helpfulness").status_code == 201
    assert ann.get("/api/v1/rankings/last").json()["assignment_id"] == second["assignment_id"]
    assert ann.post(f"/api/v1/assignments/{second['assignment_id']}/skip").status_code == 200
    last = ann.get("/api/v1/rankings/last").json()
    assert last["assignment_id"] == first["assignment_id"] and len(last["rankings"]) == 2
    url = f"/api/v1/assignments/{second['assignment_id']}/ranking"
    body = {"criterion": "helpfulness", "ranking": [[c["id"]] for c in second["completions"]]}
    assert ann.client.put(url, json=body, headers=ann.headers).status_code == 409


def test_per_item_review_shows_every_labelers_ranking_and_the_disagreement(as_labeler, new_project):
    new_project(n_prompts=1, overlap=2)
    boss = as_labeler("boss", admin=True)
    for name, order, flag in (("ann", [0, 1, 2], False), ("bob", [1, 0, 2], True)):
        api = as_labeler(name, acknowledge="demo")
        task = api.next().json()
        by_text = sorted(task["completions"], key=lambda c: c["text"])  # p0-0, p0-1, p0-2
        ranking = [[by_text[i]["id"]] for i in order]
        r = api.rank(task["assignment_id"], ranking, rationale=f"{name} says", flag_unsafe=flag)
        assert r.status_code == 201
    (item,) = boss.get("/api/v1/admin/projects/demo/items").json()
    assert item["prompt_id"] == "p0" and item["prompt"] == "Summarize document 0."
    assert [c["id"] for c in item["completions"]] == ["p0-0", "p0-1", "p0-2"]
    assert item["flagged"] is True
    per = item["criteria"]["helpfulness"]
    assert [(r["labeler"], r["ranking"], r["rationale"]) for r in per["rankings"]] == [
        ("ann", [["p0-0"], ["p0-1"], ["p0-2"]], "ann says"),
        ("bob", [["p0-1"], ["p0-0"], ["p0-2"]], "bob says"),
    ]
    assert per["contested"] == [["p0-0", "p0-1"]]
    assert per["agreement"] == round(2 / 3, 4)
    status = boss.get("/api/v1/admin/projects/demo/status").json()
    assert status["flagged_unsafe"][0]["prompt"] == "Summarize document 0."
    assert boss.get("/api/v1/admin/projects/demo/items?prompt_id=nope").json() == []
    assert as_labeler("eve").get("/api/v1/admin/projects/demo/items").status_code == 403


def test_records_from_an_uploaded_jsonl_file_name_the_line(db):
    from alignloop.schema import SchemaError
    from alignloop.server import service

    text = '{"id": "q0", "prompt": "Hi?"}\n\n{"id": "q1", "prompt": "Yo?", "typo": 1}\n'
    with pytest.raises(SchemaError, match=r"prompts.jsonl:3: prompt: field 'typo'"):
        service.parse_records("prompt", text, "prompts.jsonl")
    with pytest.raises(SchemaError, match=r"prompts.jsonl:1: not valid JSON"):
        service.parse_records("prompt", "{nope\n", "prompts.jsonl")
    (ok,) = service.parse_records("prompt", '{"id": "q0", "prompt": "Hi?"}\n', "prompts.jsonl")
    assert ok.id == "q0" and ok.where == "prompts.jsonl:1"


def test_an_admin_replaces_the_guidelines_through_the_api(as_labeler, new_project):
    new_project()
    boss, ann = as_labeler("boss", admin=True), as_labeler("ann", acknowledge="demo")
    url = "/api/v1/admin/projects/demo/guidelines"
    assert ann.client.put(url, json={"markdown": "# New"}, headers=ann.headers).status_code == 403
    r = boss.client.put(url, json={"markdown": "# New rules\n"}, headers=boss.headers)
    assert r.status_code == 200 and r.json()["changed"] is True
    again = boss.client.put(url, json={"markdown": "# New rules\n"}, headers=boss.headers)
    assert again.json() == {**r.json(), "changed": False}
    assert ann.next().status_code == 409  # acknowledge the new version first
    bad = boss.client.put(url, json={"markdown": "a\x00"}, headers=boss.headers)
    assert bad.status_code == 422


def test_changes_sent_at_once_each_make_one_version(db, new_project):
    """Eight different changes at the same moment: versions 2..9, one row, eight
    revisions, no error (the assignment row is locked while a change is made)."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from alignloop.server import assign, service
    from alignloop.server.models import Labeler

    new_project(n_prompts=1, overlap=1)
    service.add_labeler(db, "ann")
    with db.read() as session:
        ann = session.scalar(select(Labeler.id).where(Labeler.name == "ann"))
    assign.acknowledge(db, ann, "demo", assign.guidelines_for(db, ann, "demo")["version"])
    task = assign.next_task(db, ann, "demo")
    order = [[c["id"]] for c in task["completions"]]
    assign.submit_ranking(db, ann, task["assignment_id"], assign.Submission(None, order))
    barrier = threading.Barrier(8)

    def change(i: int) -> int:
        barrier.wait()
        sub = assign.Submission(None, order[::-1], rationale=f"change {i}")
        return assign.replace_ranking(db, ann, task["assignment_id"], sub)["version"]

    with ThreadPoolExecutor(8) as pool:
        versions = sorted(pool.map(change, range(8)))
    assert versions == list(range(2, 10))
    with db.read() as session:
        assert len(session.scalars(select(RankingRow)).all()) == 1
        revisions = session.scalars(select(RankingRevision.version)).all()
        assert sorted(revisions) == list(range(1, 9))
