"""What probing the running server found (issue 13), each on SQLite and PostgreSQL:
bodies refused before they are read, bounded error messages, the same clear 4xx
for ids, NUL bytes and over-long strings on both databases, limits checked when a
project is created, strict booleans, the declared error statuses, reserved names,
no-store on new tokens, HSTS, a sign-in rate limit, and the overlap of partly
ranked assignments that expire."""

from __future__ import annotations

import asyncio
import json
import re

import pytest

from alignloop.schema import SchemaError
from alignloop.server import service
from alignloop.server.errors import Invalid
from alignloop.server.limits import ANONYMOUS_MAX_BYTES


def ids(task) -> list[str]:
    return [c["id"] for c in task["completions"]]


def asgi_post(app, path: str, headers: dict[str, str], chunks, chunk_size: int):
    """POST straight to the ASGI app: (status, body, bytes the app read)."""
    read = 0
    sent: list[dict] = []

    async def receive():
        nonlocal read
        if read >= chunks * chunk_size:
            return {"type": "http.request", "body": b"", "more_body": False}
        read += chunk_size
        return {"type": "http.request", "body": b"x" * chunk_size, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "app": app,
    }
    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, read


# --- bodies: authenticate first, cap the size ------------------------------------------


def test_a_huge_body_without_a_token_is_refused_unread(app):
    mb = 1024 * 1024
    for headers in (
        {"content-length": str(200 * mb), "content-type": "application/json"},
        {"content-length": str(200 * mb), "authorization": "Bearer alt_not-a-token"},
    ):
        status, body, read = asgi_post(app, "/api/v1/assignments/1/ranking", headers, 200, mb)
        assert status == 413 and read == 0, (status, body)
        assert "without a valid token" in json.loads(body)["detail"]
    # no Content-Length (chunked): counted, and cut off past the anonymous limit
    status, body, read = asgi_post(app, "/api/v1/assignments/1/ranking", {}, 200, 16 * 1024)
    assert status == 413 and read <= ANONYMOUS_MAX_BYTES + 16 * 1024


def test_a_signed_in_body_is_capped_at_the_configured_limit(db, clock, as_labeler):
    from alignloop.server.app import create_app

    ann = as_labeler("ann")
    app = create_app(db, clock=clock, max_body_bytes=1024 * 1024)
    mb = 1024 * 1024
    headers = {**ann.headers, "content-type": "application/json"}
    status, body, read = asgi_post(
        app, "/api/v1/assignments/1/ranking", {**headers, "content-length": str(2 * mb)}, 2, mb
    )
    assert status == 413 and read == 0 and "1048576 bytes" in json.loads(body)["detail"]
    status, _, read = asgi_post(app, "/api/v1/assignments/1/ranking", headers, 50, 64 * 1024)
    assert status == 413 and read <= mb + 64 * 1024
    # under the limit, the request goes through to the handler (a 422 for this body)
    status, _, _ = asgi_post(app, "/api/v1/assignments/1/ranking", headers, 2, 1024)
    assert status == 422


# --- bounded errors, ids, NUL bytes, strict types -------------------------------------------


def test_a_million_unknown_ids_give_a_short_422(as_labeler, new_project):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    unknown = [[f"id{i}" for i in range(1_000_000)]]
    r = ann.rank(task["assignment_id"], unknown)
    assert r.status_code == 422 and len(r.content) < 5_000
    assert "and 999990 more" in r.text
    r = ann.rank(task["assignment_id"], [[i] for i in range(100_000)])  # not even strings
    assert r.status_code == 422 and len(r.content) < 10_000
    assert "and 99980 more" in r.text


@pytest.mark.parametrize("big", [2**31, 2**63, 10**30])
def test_ids_beyond_an_integer_column_are_422_on_both_databases(as_labeler, new_project, big):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    for r in (
        ann.get(f"/api/v1/assignments/{big}"),
        ann.rank(big, [["a"]]),
        ann.post(f"/api/v1/assignments/{big}/skip"),
        ann.get("/api/v1/assignments/-1"),
    ):
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["path", "assignment_id"]


def test_nul_bytes_are_4xx_on_both_databases(as_labeler, new_project):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    boss = as_labeler("boss", admin=True)
    task = ann.next().json()
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)], rationale="a\x00b")
    assert r.status_code == 422 and "NUL" in r.text
    r = boss.post("/api/v1/admin/labelers", json={"name": "ev\x00e"})
    assert r.status_code == 422 and "NUL" in r.text
    assert ann.get("/api/v1/projects/de%00mo/guidelines").status_code == 404
    assert ann.get("/api/v1/tasks/next", params={"project": "de\x00mo"}).status_code == 404
    assert boss.get("/api/v1/admin/projects/de%00mo/status").status_code == 404
    r = ann.post("/api/v1/projects/demo/guidelines/ab%00cd/acknowledge")
    assert r.status_code == 409 and "no version" in r.text
    assert ann.get("/api/v1/projects/" + "x" * 5000 + "/guidelines").status_code == 404
    # nothing stuck: the same labeler still submits
    assert ann.rank(task["assignment_id"], [[i] for i in ids(task)]).status_code == 201


def test_booleans_are_strict_and_a_null_criterion_is_left_out(as_labeler, new_project):
    new_project()
    ann = as_labeler("ann", acknowledge="demo")
    boss = as_labeler("boss", admin=True)
    task = ann.next().json()
    order = [[i] for i in ids(task)]
    for body in ({"unrankable": "yes"}, {"unrankable": 1}, {"flag_unsafe": "true"}):
        r = ann.rank(task["assignment_id"], order, **body)
        assert r.status_code == 422, body
    assert boss.post("/api/v1/admin/labelers", json={"name": "eve", "admin": 0}).status_code == 422
    r = ann.rank(task["assignment_id"], order, criterion=None)
    assert r.status_code == 201 and r.json()["criterion"] == "helpfulness"


def test_openapi_declares_every_status_the_api_answers(client):
    paths = client.get("/openapi.json").json()["paths"]
    for path, operations in paths.items():
        for method, op in operations.items():
            assert {"400", "401", "413"} <= set(op["responses"]), (method, path)
            if method == "post":
                assert "409" in op["responses"], path


# --- limits checked when a project is created -------------------------------------------------


def test_what_the_tables_cannot_hold_is_refused_when_the_project_is_created(db, records):
    prompts, completions = records(2, 2)
    base = dict(
        name="demo",
        criteria=["helpfulness"],
        guidelines="# Rules\n",
        prompts=prompts,
        completions=completions,
        overlap=1,
    )
    for change, expected in (
        ({"criteria": ["c" * 150]}, "150 characters long; at most 100"),
        ({"name": "n" * 201}, "at most 200"),
        ({"name": "a/b"}, "contains '/'"),
        ({"name": "a\x00b"}, "NUL"),
        ({"overlap": 99999999999999999999}, "--overlap must be in [1, 2147483647]"),
        ({"assignment_ttl_s": 2**40}, "--assignment-ttl (seconds) must be in"),
        ({"guidelines": "# a\x00"}, "NUL"),
    ):
        with pytest.raises(Invalid, match=re.escape(expected)):
            service.create_project(db, **{**base, **change})
    long_id = prompts[0].model_copy(update={"id": "p" * 201})
    nul_text = completions[0].model_copy(update={"completion": "a\x00"})
    with pytest.raises(SchemaError) as e:
        service.create_project(db, **{**base, "prompts": [long_id, prompts[1]]})
    assert "field 'id' is 201 characters long" in str(e.value)
    with pytest.raises(SchemaError) as e:
        service.create_project(db, **{**base, "completions": [nul_text, *completions[1:]]})
    assert "field 'completion' contains a NUL byte" in str(e.value)
    assert service.list_projects(db) == []  # never a half project
    service.create_project(db, **{**base, "criteria": ["c" * 100]})  # at the limit: fine


@pytest.mark.parametrize("name", ["gold", "consensus", "a\nb", "x" * 201])
def test_reserved_and_unusable_labeler_names_are_refused(db, name):
    with pytest.raises(Invalid):
        service.add_labeler(db, name)


# --- headers ----------------------------------------------------------------------------------


def test_a_new_token_is_never_cached(as_labeler):
    boss = as_labeler("boss", admin=True)
    r = boss.post("/api/v1/admin/labelers", json={"name": "carol"})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"


def test_hsts_only_behind_a_proxy(sqlite_db, monkeypatch, tmp_path):
    from fastapi.testclient import TestClient

    from alignloop.cli import main
    from alignloop.server.app import create_app

    with TestClient(create_app(sqlite_db)) as c:
        assert "strict-transport-security" not in c.get("/login").headers
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kw: served.append(app))
    url = str(sqlite_db.url)
    assert main(["serve", "--db", url, "--proxy-headers"]) == 0
    assert main(["serve", "--db", url]) == 0
    with_proxy, without = (TestClient(a).get("/openapi.json").headers for a in served)
    assert with_proxy["strict-transport-security"].startswith("max-age=")
    assert "strict-transport-security" not in without


# --- sign-in ----------------------------------------------------------------------------------


def test_sign_in_is_rate_limited_per_address(app, db, clock, client):
    token = service.add_labeler(db, "ann")

    def attempt(t: str) -> int:
        form = client.get("/login").text
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        r = client.post("/login", data={"token": t, "csrf_token": csrf}, follow_redirects=False)
        return r.status_code

    assert [attempt(f"alt_guess{i}") for i in range(10)] == [401] * 10
    r_status = attempt(token)
    assert r_status == 429  # even the right token: no more guesses for a while
    clock.advance(5 * 60 + 1)
    assert attempt(token) == 303


# --- several criteria: an expired, partly ranked assignment --------------------------------


def test_a_partly_ranked_expired_assignment_does_not_count_past_the_overlap(
    as_labeler, new_project, clock
):
    """The rule: an assignment's rankings count as a whole. Only done assignments
    are exported, so overlap 1 means one labeler's rankings per prompt."""
    new_project(n_prompts=1, overlap=1, ttl_s=60, criteria=("helpfulness", "harmlessness"))
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    boss = as_labeler("boss", admin=True)
    task = ann.next().json()
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)], criterion="helpfulness")
    assert r.status_code == 201
    clock.advance(61)
    bobs = bob.next().json()  # ann's slot went back to the pool
    for criterion in ("helpfulness", "harmlessness"):
        r = bob.rank(bobs["assignment_id"], [[i] for i in ids(bobs)], criterion=criterion)
        assert r.status_code == 201
    r = ann.rank(task["assignment_id"], [[i] for i in ids(task)], criterion="harmlessness")
    assert r.status_code == 409 and "expired" in r.text
    rankings = boss.get("/api/v1/admin/projects/demo/export?what=rankings").text.splitlines()
    labelers = sorted(json.loads(line)["labeler"] for line in rankings)
    assert labelers == ["bob", "bob"]  # one labeler per prompt and criterion: the overlap
    status = boss.get("/api/v1/admin/projects/demo/status").json()
    assert status["progress"]["rankings"] == 2


def test_a_large_body_from_an_admin_goes_through(client, as_labeler):
    """Past the anonymous limit, a valid token (looked up before the body is read)
    lifts the cap to the configured one: a project of 200 prompts is 201."""
    boss = as_labeler("boss", admin=True)
    body = {
        "name": "big",
        "criteria": ["helpfulness"],
        "guidelines": "# Rules\n",
        "prompts": [{"id": f"q{i}", "prompt": "Question " + "x" * 300} for i in range(200)],
        "completions": [
            {"id": f"q{i}-{j}", "prompt_id": f"q{i}", "completion": "y" * 100}
            for i in range(200)
            for j in range(2)
        ],
        "overlap": 1,
    }
    assert len(json.dumps(body)) > ANONYMOUS_MAX_BYTES
    assert client.post("/api/v1/admin/projects", json=body).status_code == 413
    r = boss.post("/api/v1/admin/projects", json=body)
    assert r.status_code == 201 and r.json()["prompts"] == 200
