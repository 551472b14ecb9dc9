"""The JSON API, each test against SQLite and against PostgreSQL (the `db` fixture):
authentication and ownership, guidelines, tasks, idempotent and validated
submissions, overlap, expiry, gold items, skipping, and the admin endpoints."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import func, select

from alignloop.schema import Ranking
from alignloop.server.models import Assignment, RankingRow


def ids(task) -> list[str]:
    return [c["id"] for c in task["completions"]]


def rank_all(api, task, criterion=None):
    """Rank a task's completions in the order shown, one per group."""
    body = {"criterion": criterion} if criterion else {}
    r = api.rank(task["assignment_id"], [[i] for i in ids(task)], **body)
    assert r.status_code == 201, r.text
    return r


# --- who may do what ------------------------------------------------------------------


def test_no_token_or_unknown_token_is_401(client, new_project):
    new_project()
    for headers in (
        {},
        {"Authorization": "Bearer alt_not-a-real-token"},
        {"Authorization": "Basic x"},
    ):
        r = client.get("/api/v1/tasks/next", headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.post("/api/v1/assignments/1/ranking", json={"ranking": []}).status_code == 401


def test_admin_routes_need_an_admin(as_labeler, new_project):
    new_project()
    ann, boss = as_labeler("ann"), as_labeler("boss", admin=True)
    for path in (
        "/api/v1/admin/projects",
        "/api/v1/admin/projects/demo/status",
        "/api/v1/admin/projects/demo/export?what=pairs",
    ):
        assert ann.get(path).status_code == 403, path
        assert boss.get(path).status_code == 200, path
    r = ann.post("/api/v1/admin/labelers", json={"name": "eve", "admin": True})
    assert r.status_code == 403


def test_another_labelers_assignment_is_404(as_labeler, new_project):
    new_project()
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    task = ann.next().json()
    aid = task["assignment_id"]
    for r in (
        bob.get(f"/api/v1/assignments/{aid}"),
        bob.rank(aid, [[i] for i in ids(task)]),
        bob.post(f"/api/v1/assignments/{aid}/skip"),
        ann.get("/api/v1/assignments/999999"),
    ):
        assert r.status_code == 404
        assert r.json()["detail"].startswith("no assignment")
    assert ann.get(f"/api/v1/assignments/{aid}").status_code == 200


def test_tokens_are_stored_hashed(db, as_labeler):
    from alignloop.server.models import Labeler

    api = as_labeler("ann")
    token = api.headers["Authorization"].removeprefix("Bearer ")
    assert token.startswith("alt_") and len(token) > 40
    with db.read() as session:
        stored = session.scalar(select(Labeler.token_hash).where(Labeler.name == "ann"))
    import hashlib

    assert stored == hashlib.sha256(token.encode()).hexdigest()
    assert token not in stored


# --- guidelines ------------------------------------------------------------------------


def test_guidelines_must_be_acknowledged_before_the_first_task_and_after_a_change(
    db, as_labeler, new_project
):
    from alignloop.server.service import set_guidelines

    new_project()
    ann = as_labeler("ann")
    r = ann.next()
    assert r.status_code == 409
    body = r.json()
    assert body["project"] == "demo" and len(body["guidelines_version"]) == 64
    assert "acknowledge the guidelines" in body["detail"]
    g = ann.get("/api/v1/projects/demo/guidelines").json()
    assert g["acknowledged"] is False and g["markdown"].startswith("# How to rank")
    assert ann.post("/api/v1/projects/demo/guidelines/deadbeef/acknowledge").status_code == 409
    ann.acknowledge()
    task = ann.next().json()
    assert task["guidelines_version"] == g["version"]
    rank_all(ann, task)

    version, changed = set_guidelines(db, "demo", "# How to rank\n\nNew rule: be strict.\n")
    assert changed and version != g["version"]
    r = ann.next()
    assert r.status_code == 409 and r.json()["guidelines_version"] == version
    r = ann.post(f"/api/v1/projects/demo/guidelines/{g['version']}/acknowledge")
    assert r.status_code == 409 and "earlier version" in r.json()["detail"]
    ann.acknowledge()
    assert ann.next().json()["guidelines_version"] == version


# --- tasks ----------------------------------------------------------------------------


def test_task_shape_hides_policy_and_file_ids(as_labeler, new_project):
    new_project(n_prompts=2, k=4)
    ann = as_labeler("ann", acknowledge="demo")
    r = ann.next()
    assert r.status_code == 200
    task = r.json()
    assert set(task) >= {"assignment_id", "prompt", "completions", "criteria", "guidelines_version"}
    assert task["criteria"] == ["helpfulness"]
    assert len(task["completions"]) == 4
    for c in task["completions"]:
        assert set(c) == {"id", "text"}
    text = json.dumps(task)
    assert "policy" not in text and "p0-" not in text and "p1-" not in text


def test_completion_order_is_shuffled_per_labeler_and_stable(as_labeler, new_project):
    new_project(n_prompts=1, k=6, overlap=5)
    labelers = [as_labeler(f"l{i}", acknowledge="demo") for i in range(5)]
    orders = []
    for api in labelers:
        first = api.next().json()
        again = api.next().json()  # a reload: the same task, the same order
        assert again["assignment_id"] == first["assignment_id"]
        assert ids(again) == ids(first)
        orders.append(tuple(ids(first)))
    assert len({frozenset(o) for o in orders}) == 1  # the same six completions
    assert len(set(orders)) > 1  # ... not shown in one fixed order


def test_no_prompt_twice_and_overlap_respected_then_204(db, as_labeler, new_project):
    new_project(n_prompts=3, overlap=2)
    labelers = [as_labeler(f"l{i}", acknowledge="demo") for i in range(3)]
    seen: dict[str, list[str]] = {}
    for api in labelers:
        while (r := api.next()).status_code == 200:
            task = r.json()
            seen.setdefault(api.name, []).append(task["prompt"])
            rank_all(api, task)
        assert r.status_code == 204 and r.content == b""
    for prompts in seen.values():
        assert len(prompts) == len(set(prompts))  # never the same prompt twice
    per_prompt = [sum(p in prompts for prompts in seen.values()) for p in {*sum(seen.values(), [])}]
    assert sorted(per_prompt) == [2, 2, 2]  # overlap 2, exactly
    with db.read() as session:
        assert session.scalar(select(func.count()).select_from(RankingRow)) == 6


def test_pending_task_expires_and_returns_to_the_pool(db, as_labeler, new_project, clock):
    new_project(n_prompts=1, overlap=1, ttl_s=600)
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    task = ann.next().json()
    assert bob.next().status_code == 204  # the only slot is ann's
    clock.advance(601)
    bobs = bob.next().json()  # expired: back in the pool
    assert bobs["prompt"] == task["prompt"]
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)])
    assert r.status_code == 409 and "expired" in r.json()["detail"]
    assert ann.next().status_code == 204  # and ann never gets that prompt again
    rank_all(bob, bobs)
    with db.read() as session:
        statuses = sorted(session.scalars(select(Assignment.status)).all())
    assert statuses == ["done", "expired"]


def test_expired_task_whose_slot_is_still_free_can_be_finished(as_labeler, new_project, clock):
    new_project(n_prompts=1, overlap=1, ttl_s=60)
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    clock.advance(3600)
    assert ann.next().json()["assignment_id"] == task["assignment_id"]  # renewed
    clock.advance(3600)
    assert rank_all(ann, task).json()["assignment_complete"] is True


def test_skip_returns_the_prompt_to_others_only(as_labeler, new_project):
    new_project(n_prompts=1, overlap=1)
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    task = ann.next().json()
    r = ann.post(f"/api/v1/assignments/{task['assignment_id']}/skip")
    assert r.status_code == 200 and r.json()["status"] == "skipped"
    assert ann.post(f"/api/v1/assignments/{task['assignment_id']}/skip").status_code == 200
    assert ann.next().status_code == 204
    assert bob.next().json()["prompt"] == task["prompt"]
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)])
    assert r.status_code == 409 and "skipped" in r.json()["detail"]


# --- submitting rankings --------------------------------------------------------------


def test_submission_is_stored_once_and_a_retry_gets_it_back(db, as_labeler, new_project):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    a, b, c = ids(task)
    body = {"ranking": [[b], [a, c]], "rationale": "b is best", "flag_unsafe": True}
    first = ann.rank(task["assignment_id"], **body)
    assert first.status_code == 201
    assert first.json()["created"] is True and first.json()["assignment_complete"] is True
    tie_reordered = {**body, "ranking": [[b], [c, a]]}  # the same ranking
    for retry in (body, body, tie_reordered):
        r = ann.rank(task["assignment_id"], **retry)
        assert r.status_code == 200
        assert r.json()["created"] is False
        assert r.json()["ranking"] == first.json()["ranking"]
    r = ann.rank(task["assignment_id"], [[a], [b], [c]])
    assert r.status_code == 409 and "different ranking" in r.json()["detail"]
    with db.read() as session:
        rows = session.scalars(select(RankingRow)).all()
    assert len(rows) == 1
    external = {c["id"]: f"p0-{c['text'].split()[1]}" for c in task["completions"]}  # "summary j"
    assert rows[0].groups == [[external[b]], [external[a], external[c]]]  # the files' ids
    assert rows[0].flagged_unsafe and rows[0].rationale == "b is best"


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda a, b, c: [[a], [b]], "missing from the ranking: '{c}'"),
        (lambda a, b, c: [[a], [b], [c, "zzz"]], "not a completion of this assignment: 'zzz'"),
        (lambda a, b, c: [[a], [b, a], [c]], "completion '{a}' appears twice (groups 1 and 2)"),
        (lambda a, b, c: [[a], [], [b, c]], "group 2 of 3 is empty"),
        (lambda a, b, c: [], "ranking is empty"),
    ],
    ids=["missing", "unknown", "duplicate", "empty-group", "empty"],
)
def test_bad_rankings_get_422_saying_what_is_wrong(as_labeler, new_project, make, expected):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    a, b, c = ids(task)
    r = ann.rank(task["assignment_id"], make(a, b, c))
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "ranking"]
    assert expected.format(a=a, b=b, c=c) in error["msg"]


def test_malformed_bodies_get_422(as_labeler, new_project):
    new_project(criteria=("helpfulness", "harmlessness"))
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    aid, order = task["assignment_id"], [[i] for i in ids(task)]
    cases = {
        "flat list": ({"criterion": "helpfulness", "ranking": ids(task)}, "got a flat list"),
        "unknown field": (
            {"criterion": "helpfulness", "ranking": order, "rank": 1},
            "Extra inputs",
        ),
        "no criterion": (
            {"ranking": order},
            "criterion is required: one of helpfulness, harmlessness",
        ),
        "bad criterion": ({"criterion": "humor", "ranking": order}, "'humor' is not one of"),
    }
    for name, (body, expected) in cases.items():
        r = ann.post(f"/api/v1/assignments/{aid}/ranking", json=body)
        assert r.status_code == 422, name
        assert expected in json.dumps(r.json()["detail"]), (name, r.json())


def test_one_ranking_per_criterion_then_done(db, as_labeler, new_project):
    new_project(criteria=("helpfulness", "harmlessness"))
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    assert task["criteria"] == ["helpfulness", "harmlessness"]
    r = rank_all(ann, task, "harmlessness")
    assert r.json()["assignment_complete"] is False
    again = ann.next().json()  # the same task, one criterion to go
    assert again["assignment_id"] == task["assignment_id"]
    assert again["ranked_criteria"] == ["harmlessness"]
    r = ann.rank(task["assignment_id"], [], criterion="helpfulness", unrankable=True)
    assert r.status_code == 201 and r.json()["assignment_complete"] is True
    assert ann.next().json()["assignment_id"] != task["assignment_id"]
    r = ann.post(f"/api/v1/assignments/{task['assignment_id']}/skip")
    assert r.status_code == 409


def test_long_rationale_is_refused(as_labeler, new_project):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)], rationale="x" * 10_001)
    assert r.status_code == 422


# --- gold items -----------------------------------------------------------------------


def test_gold_items_are_mixed_in_and_score_each_labeler(db, as_labeler, new_project):
    gold = [
        Ranking(
            prompt_id=f"p{i}",
            labeler="x",
            criterion="helpfulness",
            ranking=[[f"p{i}-0"], [f"p{i}-1"], [f"p{i}-2"]],
        )
        for i in range(6)
    ]
    new_project(n_prompts=30, overlap=1, gold=gold, gold_rate=0.3)
    good, bad = as_labeler("good", acknowledge="demo"), as_labeler("bad", acknowledge="demo")
    admin = as_labeler("admin", admin=True)
    gold_prompts = {f"Summarize document {i}." for i in range(6)}
    n_gold = {}
    for api, best_first in ((good, True), (bad, False)):
        n_gold[api.name] = 0
        for _ in range(12):
            task = api.next().json()
            n_gold[api.name] += task["prompt"] in gold_prompts
            # completions "summary j of ..." -> j: rank by j (gold order) or reversed
            by_j = sorted(task["completions"], key=lambda c: c["text"], reverse=not best_first)
            r = api.rank(task["assignment_id"], [[c["id"]] for c in by_j])
            assert r.status_code == 201
    assert all(n >= 1 for n in n_gold.values()), n_gold  # 30% of 12 tasks, seeded
    status = admin.get("/api/v1/admin/projects/demo/status").json()
    g_good, g_bad = status["labelers"]["good"]["gold"], status["labelers"]["bad"]["gold"]
    assert g_good["accuracy"] == 1.0 and g_good["items"] == n_gold["good"]
    assert g_bad["accuracy"] == 0.0 and g_bad["pairs"] == 3 * n_gold["bad"]
    assert status["progress"]["gold_prompts"] == 6 and status["progress"]["prompts"] == 24
    # gold rankings are not exported unless asked for
    pairs = admin.get("/api/v1/admin/projects/demo/export?what=rankings").text.splitlines()
    exported = {json.loads(line)["prompt_id"] for line in pairs}
    assert not exported & {f"p{i}" for i in range(6)}
    assert len(pairs) == 24 - sum(n_gold.values())


# --- admin ----------------------------------------------------------------------------


def test_status_and_exports(as_labeler, new_project):
    new_project(n_prompts=2, overlap=2)
    admin = as_labeler("admin", admin=True)
    labelers = [as_labeler(f"l{i}", acknowledge="demo") for i in range(2)]
    for api in labelers:
        while (r := api.next()).status_code == 200:
            task = r.json()
            r = api.rank(
                task["assignment_id"],
                [[c["id"]] for c in sorted(task["completions"], key=lambda c: c["text"])],
                flag_unsafe=api.name == "l1",
            )
            assert r.status_code == 201
    status = admin.get("/api/v1/admin/projects/demo/status").json()
    assert status["progress"]["complete_prompts"] == 2
    assert status["agreement"]["pairwise_agreement"] == 1.0
    assert status["labelers"]["l0"]["rankings"] == 2
    assert status["labelers"]["l0"]["agreement_with_consensus"] == 1.0
    assert len(status["flagged_unsafe"]) == 2
    for what, n in (("rankings", 4), ("pairs", 4 * 3), ("consensus", 2)):
        r = admin.get(f"/api/v1/admin/projects/demo/export?what={what}")
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert len(r.text.splitlines()) == n, what
    assert admin.get("/api/v1/admin/projects/nope/status").status_code == 404
    r = admin.get("/api/v1/admin/projects/demo/export?what=pairs")
    pair = json.loads(r.text.splitlines()[0])
    assert pair["chosen"].startswith("summary 0") and pair["source"] == "ranking"
    r = admin.post("/api/v1/admin/labelers", json={"name": "carol"})
    assert r.status_code == 201 and r.json()["token"].startswith("alt_")
    assert admin.post("/api/v1/admin/labelers", json={"name": "carol"}).status_code == 409


def test_openapi_schema_lists_the_api(client):
    schema = client.get("/openapi.json").json()
    paths = schema["paths"]
    assert "/api/v1/tasks/next" in paths
    assert "204" in paths["/api/v1/tasks/next"]["get"]["responses"]
    assert "/api/v1/assignments/{assignment_id}/ranking" in paths
    assert not any(p.startswith("/login") or p.startswith("/admin") for p in paths)
    assert "HTTPBearer" in schema["components"]["securitySchemes"]
