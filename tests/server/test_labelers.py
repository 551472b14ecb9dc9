"""Labelers an admin can act on, on SQLite and PostgreSQL: deactivate (the token and
every browser session end at once, pending tasks go back to the pool), reactivate,
and rotate a lost or leaked token; from the API, the service and the CLI."""

from __future__ import annotations

from alignloop.cli import main
from alignloop.server import service
from alignloop.server.auth import start_session
from alignloop.server.security import SESSION_COOKIE


def signed_in_cookie(db, token: str) -> str:
    session_id, _ = start_session(db, token)
    return session_id


def as_browser(client, cookie: str, path: str):
    """GET `path` with only this session cookie (no bearer token)."""
    client.cookies.clear()
    client.cookies.set(SESSION_COOKIE, cookie)
    try:
        return client.get(path, follow_redirects=False)
    finally:
        client.cookies.clear()


def test_deactivate_ends_token_and_sessions_at_once_then_reactivate(
    db, client, as_labeler, new_project
):
    new_project(n_prompts=1, overlap=1)
    ann, bob = as_labeler("ann", acknowledge="demo"), as_labeler("bob", acknowledge="demo")
    boss = as_labeler("boss", admin=True)
    token = ann.headers["Authorization"].removeprefix("Bearer ")
    cookie = signed_in_cookie(db, token)
    assert as_browser(client, cookie, "/api/v1/me").status_code == 200
    assert ann.next().status_code == 200  # ann holds the only slot
    assert bob.next().status_code == 204

    r = boss.post("/api/v1/admin/labelers/ann/deactivate")
    assert r.status_code == 200 and r.json()["active"] is False
    assert ann.get("/api/v1/me").status_code == 401
    assert as_browser(client, cookie, "/api/v1/me").status_code == 401
    page = as_browser(client, cookie, "/")
    assert page.status_code == 303 and page.headers["location"].startswith("/login")
    assert bob.next().status_code == 200  # ann's pending task went back to the pool
    assert start_session(db, token) is None  # no new sign-in either

    r = boss.post("/api/v1/admin/labelers/ann/reactivate")
    assert r.status_code == 200 and r.json()["active"] is True
    assert ann.get("/api/v1/me").status_code == 200  # the same token works again
    assert as_browser(client, cookie, "/api/v1/me").status_code == 401
    listed = {lab["name"]: lab for lab in boss.get("/api/v1/admin/labelers").json()}
    assert listed["ann"]["active"] is True and listed["boss"]["is_admin"] is True


def test_rotate_token_ends_the_old_one_and_its_sessions(db, client, as_labeler):
    ann, boss = as_labeler("ann"), as_labeler("boss", admin=True)
    old = ann.headers["Authorization"].removeprefix("Bearer ")
    cookie = signed_in_cookie(db, old)
    r = boss.post("/api/v1/admin/labelers/ann/token")
    assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
    new = r.json()["token"]
    assert new.startswith("alt_") and new != old
    assert ann.get("/api/v1/me").status_code == 401
    assert as_browser(client, cookie, "/api/v1/me").status_code == 401
    me = client.get("/api/v1/me", headers={"Authorization": f"Bearer {new}"})
    assert me.status_code == 200 and me.json()["name"] == "ann"


def test_labeler_admin_routes_need_an_admin_and_a_known_name(as_labeler):
    ann, boss = as_labeler("ann"), as_labeler("boss", admin=True)
    for path in ("deactivate", "reactivate", "token"):
        assert ann.post(f"/api/v1/admin/labelers/boss/{path}").status_code == 403
        assert boss.post(f"/api/v1/admin/labelers/nobody/{path}").status_code == 404
        assert boss.post(f"/api/v1/admin/labelers/no%00body/{path}").status_code == 404
    r = boss.post("/api/v1/admin/labelers/boss/deactivate")
    assert r.status_code == 409 and "yourself" in r.json()["detail"]
    assert ann.get("/api/v1/admin/labelers").status_code == 403


def test_a_deactivated_labelers_rankings_stay(db, as_labeler, new_project):
    new_project(n_prompts=2, overlap=1)
    ann = as_labeler("ann", acknowledge="demo")
    task = ann.next().json()
    r = ann.rank(task["assignment_id"], [[c["id"]] for c in task["completions"]])
    assert r.status_code == 201
    service.deactivate_labeler(db, "ann")
    rankings = service.export_project(db, "demo", "rankings")
    assert [r.labeler for r in rankings] == ["ann"]
    assert service.project_status(db, "demo")["labelers"]["ann"]["rankings"] == 1


def test_cli_deactivate_reactivate_rotate_list(db, capsys):
    url = db.url.render_as_string(hide_password=False)
    assert main(["labeler", "add", "--db", url, "--name", "ann"]) == 0
    old = capsys.readouterr().out.strip()
    assert main(["labeler", "deactivate", "--db", url, "ann"]) == 0
    assert "deactivated" in capsys.readouterr().out
    assert start_session(db, old) is None
    assert main(["labeler", "list", "--db", url]) == 0
    assert "ann\tlabeler\tdeactivated" in capsys.readouterr().out
    assert main(["labeler", "reactivate", "--db", url, "ann"]) == 0
    capsys.readouterr()
    assert start_session(db, old) is not None
    assert main(["labeler", "rotate-token", "--db", url, "ann"]) == 0
    captured = capsys.readouterr()
    new = captured.out.strip()
    assert new.startswith("alt_") and "shown once" in captured.err
    assert start_session(db, old) is None and start_session(db, new) is not None
    assert main(["labeler", "deactivate", "--db", url, "nobody"]) == 2
    assert "no labeler named 'nobody'" in capsys.readouterr().err
