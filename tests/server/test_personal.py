"""Personal projects ("my own preferences", issue 16), on SQLite and PostgreSQL: every
labeler who opens one ranks every prompt for themself (no overlap cap, no gold, no
agreement), one labeler's pairs export on their own (what `alignloop personal fit
--user NAME` reads), the progress counts the labeler's own rankings, and the pages
say so (the admin page: what a fit of a labeler's weights needs). Migration 0004:
test_migrations.py."""

from __future__ import annotations

import json
import re

import pytest
from sqlalchemy import func, select, text

from alignloop.cli import main
from alignloop.io import read_records, write_records
from alignloop.server import service
from alignloop.server.errors import Invalid, NotFound
from alignloop.server.models import Assignment

EXPORT = "/api/v1/admin/projects/demo/export"


def j(completion_id: str) -> int:
    """The completion's number within its prompt: `p3-2` -> 2 (conftest's ids)."""
    return int(completion_id.rsplit("-", 1)[1])


def rank_everything(api, *, reverse: bool) -> list[str]:
    """Rank every task the labeler gets, by the completions' number (0 best, or
    last best with `reverse`), until none is left; the prompts they got, in order."""
    prompts = []
    while (r := api.next()).status_code == 200:
        task = r.json()
        assert task["personal"] is True
        by_text = sorted(task["completions"], key=lambda c: c["text"], reverse=reverse)
        r = api.rank(task["assignment_id"], [[c["id"]] for c in by_text])
        assert r.status_code == 201, r.text
        prompts.append(task["prompt"])
    assert r.status_code == 204, r.text
    return prompts


def pairs_of(boss, labeler: str | None = None, **params) -> list[dict]:
    if labeler is not None:
        params["labeler"] = labeler
    r = boss.get(EXPORT, params={"what": "pairs", **params})
    assert r.status_code == 200, r.text
    return [json.loads(line) for line in r.text.splitlines()]


def test_two_labelers_rank_the_same_items_in_opposite_orders_and_export_their_own(
    db, as_labeler, new_project
):
    new_project(n_prompts=4, k=3, personal=True, guidelines="")
    ann, bob, cai = as_labeler("ann"), as_labeler("bob"), as_labeler("cai")
    boss = as_labeler("boss", admin=True)
    everything = [f"Summarize document {i}." for i in range(4)]
    assert rank_everything(ann, reverse=False) == everything
    assert rank_everything(bob, reverse=True) == everything

    mine = pairs_of(boss, "ann")
    assert len(mine) == 4 * 3  # every prompt, 3 pairs of its 3 completions
    assert {p["labeler"] for p in mine} == {"ann"}
    assert all(j(p["chosen_id"]) < j(p["rejected_id"]) for p in mine)
    theirs = pairs_of(boss, "bob")
    assert len(theirs) == 12 and {p["labeler"] for p in theirs} == {"bob"}
    assert all(j(p["chosen_id"]) > j(p["rejected_id"]) for p in theirs)
    # the same pairs, each in its labeler's order; together they keep their labeler
    flip = {(p["prompt_id"], p["rejected_id"], p["chosen_id"]) for p in theirs}
    assert {(p["prompt_id"], p["chosen_id"], p["rejected_id"]) for p in mine} == flip
    both = pairs_of(boss)
    assert sorted(p["labeler"] for p in both) == ["ann"] * 12 + ["bob"] * 12
    r = boss.get(EXPORT, params={"what": "pairs", "labeler": "ann"})
    assert 'filename="demo-pairs-ann.jsonl"' in r.headers["content-disposition"]
    rankings = boss.get(EXPORT, params={"what": "rankings", "labeler": "bob"}).text.splitlines()
    assert [json.loads(x)["labeler"] for x in rankings] == ["bob"] * 4

    # A third labeler still gets every item: no overlap cap, and no gold among them.
    assert rank_everything(cai, reverse=False) == everything
    with db.read() as session:
        assert session.scalar(select(func.count()).where(Assignment.is_gold.is_(True))) == 0
        assert session.scalar(select(func.count()).select_from(Assignment)) == 12

    status = boss.get("/api/v1/admin/projects/demo/status").json()
    assert status["personal"] is True and status["agreement"] is None
    assert status["fit_pairs"] == service.FIT_PAIRS == 20
    for name in ("ann", "bob", "cai"):
        labeler = status["labelers"][name]
        assert labeler["rankings"] == 4 and labeler["pairs"] == {"helpfulness": 12}
        assert labeler["fit_ready"] is False  # 12 of the 20 comparisons a fit wants
        assert labeler["agreement_with_consensus"] is None
        assert labeler["gold"] == {"accuracy": None, "pairs": 0, "items": 0}
    assert status["progress"]["complete_prompts"] == 4  # each ranked by all three


def test_a_labeler_sees_their_own_progress_over_every_item(db, as_labeler, new_project):
    new_project(n_prompts=3, personal=True, guidelines="")
    ann, bob = as_labeler("ann"), as_labeler("bob")
    task = ann.next().json()
    assert task["progress"] == {
        "labeler_done": 0,
        "project_complete_prompts": 0,
        "project_prompts": 3,
        "project_tasks_done": 0,
        "project_tasks": 3,  # 3 prompts x the one labeler who opened it
    }
    ann.rank(task["assignment_id"], [[c["id"]] for c in task["completions"]])
    task = bob.next().json()
    assert task["progress"]["labeler_done"] == 0  # bob's own, not ann's
    assert task["progress"]["project_tasks"] == 6 and task["progress"]["project_tasks_done"] == 1
    task = ann.next().json()
    assert task["progress"]["labeler_done"] == 1 and task["progress"]["project_prompts"] == 3
    (summary,) = service.list_projects(db, name="demo")
    assert summary["personal"] is True
    assert (summary["assignments_done"], summary["assignments_needed"]) == (1, 6)


def test_default_guidelines_need_no_acknowledgement_but_an_admins_do(db, as_labeler, new_project):
    summary = new_project(personal=True, guidelines="  ")
    assert summary.personal and summary.overlap == 1 and summary.gold_rate == 0.0
    ann = as_labeler("ann")
    g = ann.get("/api/v1/projects/demo/guidelines").json()
    assert g["acknowledged"] is True and g["personal"] is True
    assert g["markdown"] == service.PERSONAL_GUIDELINES
    assert ann.next().status_code == 200
    service.set_guidelines(db, "demo", "# Rank what you would want to read\n")
    assert ann.next().status_code == 409  # new guidelines, written for them: read first
    ann.acknowledge()
    assert ann.next().status_code == 200


def test_an_expired_task_stays_the_labelers_own(db, as_labeler, new_project, clock):
    new_project(n_prompts=2, personal=True, guidelines="", ttl_s=60)
    ann, bob = as_labeler("ann"), as_labeler("bob")
    first = ann.next().json()
    clock.advance(120)
    assert bob.next().json()["prompt"] == first["prompt"]  # nobody waits for a slot
    r = ann.rank(first["assignment_id"], [[c["id"]] for c in first["completions"]])
    assert r.status_code == 201, r.text  # late, but still hers to rank
    # Deactivated with a task pending, then back: that task is pending again.
    second = ann.next().json()
    service.deactivate_labeler(db, "ann")
    service.reactivate_labeler(db, "ann")
    assert ann.next().json()["assignment_id"] == second["assignment_id"]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"overlap": 2}, "--overlap does not apply to a personal project"),
        ({"gold_rate": 0.2}, "a personal project has no gold items"),
        ({"guidelines": ""}, None),  # fine: the default guidelines
    ],
)
def test_the_admin_api_creates_a_personal_project(as_labeler, records, changes, words):
    prompts, completions = records(2, 3)
    body = {
        "name": "mine",
        "criteria": ["preference"],
        "prompts": [p.to_dict() for p in prompts],
        "completions": [c.to_dict() for c in completions],
        "personal": True,
        **changes,
    }
    boss = as_labeler("boss", admin=True)
    r = boss.post("/api/v1/admin/projects", json=body)
    if words is None:
        assert r.status_code == 201, r.text
        assert r.json()["personal"] is True and r.json()["overlap"] == 1
        assert boss.get("/api/v1/admin/projects").json()[0]["personal"] is True
    else:
        assert r.status_code == 422 and words in r.text, r.text
        assert boss.get("/api/v1/admin/projects").json() == []


def test_gold_rankings_are_refused_and_a_regular_project_still_needs_guidelines(db, records):
    prompts, completions = records(2, 3)
    gold = [
        service.parse_records(
            "ranking",
            [
                {
                    "prompt_id": "p1",
                    "labeler": "x",
                    "criterion": "helpfulness",
                    "ranking": [["p1-0"], ["p1-1", "p1-2"]],
                }
            ],
            "gold",
        )[0]
    ]
    task = {
        "name": "p",
        "criteria": ["helpfulness"],
        "prompts": prompts,
        "completions": completions,
    }
    with pytest.raises(Invalid, match="no gold items.*leave out --gold"):
        service.create_project(db, **task, guidelines="", personal=True, gold=gold)
    with pytest.raises(Invalid, match="the guidelines are empty"):
        service.create_project(db, **task, guidelines="")
    assert service.list_projects(db) == []


def test_an_unknown_labeler_in_an_export_is_404_naming_it(db, as_labeler, new_project):
    new_project(personal=True, guidelines="")
    ann, boss = as_labeler("ann"), as_labeler("boss", admin=True)
    rank_everything(ann, reverse=False)
    r = boss.get(EXPORT, params={"what": "pairs", "labeler": "zed"})
    assert r.status_code == 404
    assert r.json()["detail"] == "no labeler named 'zed' (labelers of project 'demo': 'ann')"
    assert boss.get(EXPORT, params={"what": "pairs", "labeler": "x" * 201}).status_code == 422
    assert boss.get(EXPORT, params={"what": "pairs", "labeler": "a\x00b"}).status_code == 404
    assert pairs_of(boss, "boss") == []  # a labeler who ranked nothing here: nothing
    with pytest.raises(NotFound, match="no labeler named 'gold'"):
        service.export_project(db, "demo", "rankings", labeler="gold")


def test_cli_creates_a_personal_project_and_exports_one_labelers_pairs(
    db, tmp_path, records, capsys
):
    url = db.url.render_as_string(hide_password=False)
    prompts, completions = records(3, 3)
    write_records(tmp_path / "prompts.jsonl", prompts)
    write_records(tmp_path / "completions.jsonl", completions)
    create = ["project", "create", "--db", url, "--name", "demo", "--criteria", "taste"]
    create += ["--prompts", str(tmp_path / "prompts.jsonl")]
    create += ["--completions", str(tmp_path / "completions.jsonl")]
    assert main(create) == 2
    assert "--guidelines FILE is needed (only a --personal project" in capsys.readouterr().err
    assert main([*create, "--personal", "--overlap", "2"]) == 2
    assert "--overlap does not apply to a personal project" in capsys.readouterr().err
    assert main([*create, "--personal"]) == 0
    out = capsys.readouterr().out
    assert "3 prompts to rank by taste by every labeler for themself (personal" in out

    from alignloop.server import assign

    for name, reverse in (("ann", False), ("bob", True)):
        service.add_labeler(db, name)
        with db.read() as session:
            labeler_id = session.scalar(text(f"SELECT id FROM labelers WHERE name = '{name}'"))
        while (task := assign.next_task(db, labeler_id, "demo")) is not None:
            order = sorted(task["completions"], key=lambda c: c["text"], reverse=reverse)
            groups = [[c["id"]] for c in order]
            assign.submit_ranking(
                db, labeler_id, task["assignment_id"], assign.Submission(None, groups)
            )
    export = ["project", "export", "--db", url, "--name", "demo", "--what", "pairs"]
    assert main([*export, "--labeler", "bob", "--out", str(tmp_path / "bob.jsonl")]) == 0
    assert "wrote 9 pairs records of 'bob' to" in capsys.readouterr().out
    pairs = read_records(tmp_path / "bob.jsonl", "comparison")
    assert {p.labeler for p in pairs} == {"bob"}
    assert all(j(p.chosen_id) > j(p.rejected_id) for p in pairs)
    assert main([*export, "--labeler", "zed", "--out", str(tmp_path / "zed.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "no labeler named 'zed' (labelers of project 'demo': 'ann', 'bob')" in err
    assert not (tmp_path / "zed.jsonl").exists()
    status = json.loads(main_out(["project", "status", "--db", url, "--name", "demo"], capsys))
    assert status["personal"] is True and status["labelers"]["ann"]["pairs"] == {"taste": 9}


def main_out(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def test_a_labeler_is_ready_for_a_fit_from_20_comparisons(db, as_labeler, new_project):
    new_project(n_prompts=7, k=3, personal=True, guidelines="")
    ann = as_labeler("ann")
    for _ in range(6):
        task = ann.next().json()
        ann.rank(task["assignment_id"], [[c["id"]] for c in task["completions"]])
    labeler = service.project_status(db, "demo")["labelers"]["ann"]
    assert labeler["pairs"] == {"helpfulness": 18} and labeler["fit_ready"] is False
    task = ann.next().json()
    ann.rank(task["assignment_id"], [[c["id"]] for c in task["completions"]])
    labeler = service.project_status(db, "demo")["labelers"]["ann"]
    assert labeler["pairs"] == {"helpfulness": 21} and labeler["fit_ready"] is True


# --- the pages --------------------------------------------------------------------------


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def signed_in(client, token: str):
    client.cookies.clear()
    form = client.get("/login")
    data = {"token": token, "csrf_token": csrf_of(form.text), "next": "/"}
    assert client.post("/login", data=data, follow_redirects=False).status_code == 303
    return client


def test_the_pages_say_personal_in_both_languages(db, client, new_project):
    new_project(n_prompts=7, k=3, personal=True, guidelines="")
    new_project("pooled", n_prompts=1)
    ann = service.add_labeler(db, "ann")
    boss = service.add_labeler(db, "boss", admin=True)
    signed_in(client, ann)
    home = client.get("/").text
    assert home.count("your own preferences") == 1  # demo's card, not pooled's
    page = client.get("/projects/demo/label")  # no guidelines to acknowledge first
    assert page.status_code == 200
    assert "Your own preferences: rank by what you prefer." in page.text
    assert 'data-personal="1"' in page.text
    zh = client.get("/projects/demo/label", headers={"Accept-Language": "zh-CN"}).text
    assert "你自己的偏好：按你喜欢的程度排序。" in zh
    assert "Your own preferences" not in client.get("/projects/pooled/guidelines").text

    from alignloop.server import assign

    with db.read() as session:
        ann_id = session.scalar(text("SELECT id FROM labelers WHERE name = 'ann'"))
    for _ in range(2):
        task = assign.next_task(db, ann_id, "demo")
        groups = [[c["id"]] for c in task["completions"]]
        assign.submit_ranking(db, ann_id, task["assignment_id"], assign.Submission(None, groups))

    signed_in(client, boss)
    admin = client.get("/admin/projects/demo").text
    assert "Personal: each labeler ranks every prompt by their own preferences" in admin
    assert "agreement between labelers is not meaningful" in admin
    assert "gold rate" not in admin and "Kendall" not in admin
    assert "2 rankings by ann; 14 more comparisons to fit their weights (the fit needs 20)" in admin
    assert "/admin/projects/demo/export/pairs?labeler=ann" in admin
    download = client.get("/admin/projects/demo/export/pairs?labeler=ann")
    assert download.status_code == 200 and len(download.text.splitlines()) == 6
    r = client.get("/admin/projects/demo/export/pairs?labeler=zed")
    assert r.status_code == 404 and "no labeler named &#39;zed&#39;" in r.text
    zh = client.get("/admin/projects/demo", headers={"Accept-Language": "zh"}).text
    assert "个人项目：每位标注员按自己的偏好为每个提示排序" in zh and "还差 14 个比较" in zh
    index = client.get("/admin").text
    assert re.search(r"<td>personal</td>", index) and re.search(r"<td>2</td>", index)
    review = client.get("/admin/projects/demo/review").text
    assert "each labeler ranked by their own taste" in review
    assert "pairwise agreement" not in review and "ordered both ways:" not in review
    pooled = client.get("/admin/projects/pooled").text
    assert "Personal:" not in pooled and "Kendall" in pooled


def test_the_admin_page_creates_a_personal_project_without_guidelines(db, client, records):
    boss = service.add_labeler(db, "boss", admin=True)
    signed_in(client, boss)
    prompts, completions = records(2, 3)
    files = {
        "prompts": ("p.jsonl", "".join(json.dumps(p.to_dict()) + "\n" for p in prompts)),
        "completions": ("c.jsonl", "".join(json.dumps(c.to_dict()) + "\n" for c in completions)),
    }
    form = client.get("/admin/projects/new").text
    assert 'name="personal"' in form
    fields = {"name": "mine", "criteria": "taste", "overlap": "3", "assignment_ttl_min": "30"}
    fields["csrf_token"] = csrf_of(form)
    r = client.post("/admin/projects/new", data=fields, files=files, follow_redirects=False)
    assert r.status_code == 422 and "the guidelines are empty" in r.text  # not personal
    fields["personal"] = "true"
    r = client.post("/admin/projects/new", data=fields, files=files, follow_redirects=False)
    assert r.status_code == 303, r.text
    (summary,) = service.list_projects(db)
    assert summary["personal"] is True and summary["overlap"] == 1
