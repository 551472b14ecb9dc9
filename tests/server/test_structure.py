"""How the server is put together, checked so that a new route or a new caller cannot
drift: every POST page checks CSRF through one dependency, a ranking's shape is
checked by one function (`schema.ranking_problems`) wherever it arrives, and the
task picker's open-prompt query is the one `_has_work` asks."""

from __future__ import annotations

import datetime as dt

import pytest
from fastapi.routing import APIRoute
from pydantic import ValidationError

from alignloop.schema import SchemaError, parse_record, ranking_problems
from alignloop.server import assign, pages
from alignloop.server.api import RankingIn
from alignloop.server.errors import Invalid
from alignloop.server.models import Labeler, Project


def _calls(dependant) -> set:
    """Every callable a route depends on, however deep."""
    found = {dependant.call}
    for d in dependant.dependencies:
        found |= _calls(d)
    return found


def _routes(routes) -> list[APIRoute]:
    """The app's routes, with those of included routers (FastAPI may nest them)."""
    found = []
    for r in routes:
        if isinstance(r, APIRoute):
            found.append(r)
        elif getattr(r, "original_router", None) is not None:
            found += _routes(r.original_router.routes)
    return found


def test_every_post_page_checks_csrf_through_a_dependency(sqlite_db):
    from alignloop.server.app import create_app

    app = create_app(sqlite_db)
    posts = [
        r for r in _routes(app.routes) if "POST" in r.methods and not r.path.startswith("/api/")
    ]
    assert {r.path for r in posts} >= {"/login", "/logout", "/admin/labelers"}
    for route in posts:
        assert _calls(route.dependant) & set(pages.CSRF_CHECKS), route.path


@pytest.mark.parametrize(
    "groups",
    [[["a"], ["a"]], [["a", "b", "a"]], [["a"], []], [], [["a"], [], []]],
    ids=["twice", "twice-in-a-group", "empty-group", "empty", "two-empty-groups"],
)
def test_one_ranking_check_for_records_the_api_and_assignments(groups):
    expected = ranking_problems(groups)
    assert expected
    with pytest.raises(SchemaError) as record:
        parse_record(
            "ranking", {"prompt_id": "p", "labeler": "l", "criterion": "c", "ranking": groups}
        )
    with pytest.raises(Invalid) as submitted:
        assign.check_ranking(groups, ["a", "b"], unrankable=False)
    for problem in expected:
        assert problem in str(record.value)
        assert problem in str(submitted.value)


def test_flat_lists_get_the_same_message_everywhere():
    with pytest.raises(ValidationError) as api:
        RankingIn(ranking=["a", "b"])
    with pytest.raises(SchemaError) as record:
        parse_record(
            "ranking", {"prompt_id": "p", "labeler": "l", "criterion": "c", "ranking": ["a"]}
        )
    message = api.value.errors()[0]["msg"].removeprefix("Value error, ")
    assert "got a flat list" in message and message in str(record.value)


@pytest.mark.parametrize("personal", [False, True])
def test_has_work_agrees_with_the_picker(db, new_project, as_labeler, personal):
    """_has_work and _pick_regular ask the same question (one query), in a personal
    project too (where each labeler ranks every prompt)."""
    new_project(n_prompts=2, overlap=1, personal=personal)
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    now = dt.datetime(2026, 1, 1, 12, 0, 0)

    def agree(name: str) -> bool:
        with db.write() as session:
            labeler = session.query(Labeler).filter_by(name=name).one()
            project = session.query(Project).filter_by(name="demo").one()
            picked = assign._pick_regular(db, session, labeler, project, now)
            has = assign._has_work(db, session, labeler, project, now)
            session.rollback()
        assert has == (picked is not None)  # no pending task here: the same question
        return has

    assert agree("ann") and agree("bob")
    for api in (ann, bob):
        task = api.next().json()
        r = api.rank(task["assignment_id"], [[c["id"]] for c in task["completions"]])
        assert r.status_code == 201
    assert agree("ann") == agree("bob") == personal  # personal: the other prompt is theirs
