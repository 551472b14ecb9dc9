"""The HTML pages through a test client (SQLite): sign-in and its cookie, CSRF on
every form and on cookie-authenticated API calls, escaping of untrusted text,
admin-only pages, security headers, and no secrets in the logs."""

from __future__ import annotations

import json
import logging
import re

import pytest
from fastapi.testclient import TestClient

from alignloop.schema import Completion, Prompt
from alignloop.server import service
from alignloop.server.app import create_app

XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'


@pytest.fixture
def site(sqlite_db):
    """(client, db, tokens) with a project whose texts try to inject markup."""
    prompts = [Prompt(id="p0", prompt=f"Prompt {XSS}"), Prompt(id="p1", prompt="Prompt two")]
    completions = [
        Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=f"{XSS} answer {j}")
        for p in prompts
        for j in range(3)
    ]
    guidelines = (
        f"# Rules\n\n{XSS}\n\n[click](javascript:alert(1))\n\n| a | b |\n|---|---|\n| 1 | 2 |\n"
    )
    service.create_project(
        sqlite_db,
        name="demo",
        criteria=["helpfulness"],
        guidelines=guidelines,
        prompts=prompts,
        completions=completions,
        overlap=2,
    )
    tokens = {
        "ann": service.add_labeler(sqlite_db, "ann"),
        "boss": service.add_labeler(sqlite_db, "boss", admin=True),
    }
    with TestClient(create_app(sqlite_db)) as client:
        yield client, sqlite_db, tokens


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)


def sign_in(client, token: str):
    form = client.get("/login")
    return client.post(
        "/login",
        data={"token": token, "csrf_token": csrf_of(form.text), "next": "/"},
        follow_redirects=False,
    )


def test_pages_need_a_session(site):
    client, _, _ = site
    for path in ("/", "/projects/demo/label", "/projects/demo/guidelines", "/admin"):
        r = client.get(path, follow_redirects=False)
        assert r.status_code == 303
        assert r.headers["location"].startswith("/login?next=")


def test_sign_in_sets_an_httponly_samesite_cookie(site):
    client, _, tokens = site
    r = sign_in(client, tokens["ann"])
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = [c for c in r.headers.get_list("set-cookie") if c.startswith("alignloop_session=")][0]
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie
    assert tokens["ann"] not in cookie
    assert "ann" in client.get("/").text


def test_sign_in_refuses_bad_tokens_and_forged_forms(site):
    client, _, tokens = site
    r = sign_in(client, "alt_wrong")
    assert r.status_code == 401 and "Unknown token." in r.text
    client.cookies.clear()
    r = client.post(
        "/login", data={"token": tokens["ann"], "csrf_token": "forged"}, follow_redirects=False
    )
    assert r.status_code == 403
    r = sign_in(client, tokens["ann"])
    # an absolute or scheme-relative `next` is not followed (no open redirect)
    form = client.get("/login")
    r = client.post(
        "/login",
        data={"token": tokens["ann"], "csrf_token": csrf_of(form.text), "next": "//evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"


def test_guidelines_are_rendered_escaped_and_acknowledged_with_csrf(site):
    client, _, tokens = site
    sign_in(client, tokens["ann"])
    r = client.get("/projects/demo/label", follow_redirects=False)
    assert r.headers["location"] == "/projects/demo/guidelines"  # not acknowledged yet
    page = client.get("/projects/demo/guidelines").text
    assert "<h1>Rules</h1>" in page and "<table>" in page
    assert "<script>window.__pwned" not in page and "&lt;script&gt;" in page
    assert 'href="javascript:' not in page
    version = re.search(r'name="version" value="([0-9a-f]{64})"', page).group(1)
    url = "/projects/demo/guidelines/acknowledge"
    r = client.post(url, data={"version": version}, follow_redirects=False)
    assert r.status_code == 403  # no CSRF token
    r = client.post(
        url, data={"version": version, "csrf_token": csrf_of(page)}, follow_redirects=False
    )
    assert r.status_code == 303 and r.headers["location"] == "/projects/demo/label"
    label = client.get("/projects/demo/label")
    assert label.status_code == 200
    assert 'src="/static/rank.js"' in label.text and "<script>" not in label.text.replace(
        '<script src="/static/rank.js" defer></script>', ""
    )


def test_cookie_sessions_need_the_csrf_header_for_api_changes(site):
    client, db, tokens = site
    sign_in(client, tokens["ann"])
    page = client.get("/projects/demo/guidelines").text
    version = re.search(r'name="version" value="([0-9a-f]{64})"', page).group(1)
    url = f"/api/v1/projects/demo/guidelines/{version}/acknowledge"
    assert client.post(url).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": "nope"}).status_code == 403
    assert client.post(url, headers={"X-CSRF-Token": csrf_of(page)}).status_code == 200
    task = client.get("/api/v1/tasks/next").json()  # GET needs no token
    assert task["completions"][0]["text"].startswith("<script>")  # JSON, shown via textContent


def test_admin_pages_are_for_admins_and_escape_what_labelers_wrote(site):
    client, db, tokens = site
    from alignloop.server import assign
    from alignloop.server.models import Labeler

    with db.read() as session:
        ann_id = session.query(Labeler.id).filter_by(name="ann").scalar()
    assign.acknowledge(db, ann_id, "demo", assign.guidelines_for(db, ann_id, "demo")["version"])
    task = assign.next_task(db, ann_id, "demo")
    ranking = [[c["id"]] for c in task["completions"]]
    assign.submit_ranking(
        db,
        ann_id,
        task["assignment_id"],
        assign.Submission(None, ranking, rationale=XSS, flag_unsafe=True),
    )

    sign_in(client, tokens["ann"])
    for path in (
        "/admin",
        "/admin/projects/demo",
        "/admin/labelers",
        "/admin/projects/demo/export/pairs",
    ):
        r = client.get(path)
        assert r.status_code == 403, path
    client.cookies.clear()
    sign_in(client, tokens["boss"])
    page = client.get("/admin/projects/demo")
    assert page.status_code == 200 and "Flagged as unsafe" in page.text
    assert "&lt;script&gt;window.__pwned" in page.text and "<script>window" not in page.text
    export = client.get("/admin/projects/demo/export/rankings")
    assert export.status_code == 200 and '"labeler": "ann"' in export.text
    form = client.get("/admin/labelers").text
    r = client.post("/admin/labelers", data={"name": "carol", "csrf_token": csrf_of(form)})
    assert r.status_code == 201 and r.headers["cache-control"] == "no-store"
    token = re.search(r'id="new-token" class="token">([^<]+)<', r.text).group(1)
    assert token.startswith("alt_")
    assert token not in client.get("/admin/labelers").text  # shown once
    r = client.post("/admin/labelers", data={"name": "dave"})
    assert r.status_code == 403


def test_sign_out_ends_the_session_on_the_server(site):
    client, _, tokens = site
    sign_in(client, tokens["ann"])
    old_cookie = client.cookies.get("alignloop_session")
    home = client.get("/").text
    assert (
        client.post(
            "/logout", data={"csrf_token": csrf_of(home)}, follow_redirects=False
        ).status_code
        == 303
    )
    client.cookies.set("alignloop_session", old_cookie)
    assert client.get("/", follow_redirects=False).status_code == 303  # the old cookie is dead


def test_security_headers(site):
    client, _, _ = site
    for path in ("/login", "/static/app.css", "/openapi.json"):
        r = client.get(path)
        assert "script-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"


def test_no_secrets_in_logs(site, caplog):
    client, _, tokens = site
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.INFO, logger="sqlalchemy.engine")  # every SQL statement, with values
    sign_in(client, tokens["ann"])
    session_id = client.cookies.get("alignloop_session")
    client.get("/api/v1/tasks/next", headers={"Authorization": f"Bearer {tokens['boss']}"})
    client.get("/api/v1/tasks/next", headers={"Authorization": "Bearer alt_guess"})
    logged = caplog.text
    assert "FROM labelers" in logged  # the statements that looked the tokens up are there
    for secret in (*tokens.values(), session_id, "alt_guess"):
        assert secret not in logged


# --- the catalogue, the language, the error pages --------------------------------------


def _placeholders(value) -> set[str]:
    forms = value.values() if isinstance(value, dict) else [value]
    return {name for form in forms for name in re.findall(r"\{(\w+)\}", form)}


def test_every_catalogue_has_the_english_keys_and_placeholders():
    from alignloop.server import i18n

    english = i18n.catalogue("en")
    for lang in i18n.LANGUAGES:
        catalogue = i18n.catalogue(lang)
        assert set(catalogue) == set(english), lang
        for key, value in english.items():
            assert _placeholders(catalogue[key]) == _placeholders(value), (lang, key)
            if isinstance(catalogue[key], dict):
                assert "other" in catalogue[key], (lang, key)


def test_every_string_the_pages_and_the_script_use_is_in_the_catalogue():
    from importlib.resources import files

    from alignloop.server import i18n, pages

    server = files("alignloop.server")
    used = set()
    for template in (server / "templates").iterdir():
        used |= set(re.findall(r"""\bt\(\s*["']([\w.]+)["']\s*[,)]""", template.read_text()))
    script = (server / "static" / "rank.js").read_text()
    used |= set(re.findall(r"""\bt\(\s*["'](js\.[\w.]+)["']""", script))
    kinds = [*pages._ERROR_KINDS.values(), "other"]
    used |= {f"error.{kind}.{part}" for kind in kinds for part in ("title", "explain")}
    assert len(used) > 100
    assert sorted(used - set(i18n.catalogue("en"))) == []
    # No English left in the markup: each template's visible words come from t().
    label = (server / "templates" / "label.html").read_text()
    assert "Submit ranking" not in label and "Skip this prompt" not in label


def test_the_language_follows_the_browser_and_the_switch(site):
    client, _, _ = site
    zh = {"Accept-Language": "zh-CN,zh;q=0.9,en;q=0.8"}
    page = client.get("/login", headers=zh).text
    assert '<html lang="zh-Hans">' in page and "登录" in page and "Sign in" not in page
    assert (
        '<html lang="en">' in client.get("/login", headers={"Accept-Language": "fr, en;q=0.5"}).text
    )
    r = client.get("/language/en?next=/login", headers=zh, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert "alignloop_lang=en" in r.headers["set-cookie"]
    assert "Sign in" in client.get("/login", headers=zh).text  # the switch wins
    r = client.get("/language/zh?next=//evil.example/", follow_redirects=False)
    assert r.headers["location"] == "/"
    assert "登录" in client.get("/login").text
    assert client.get("/language/xx").status_code == 404


def test_i18n_choose():
    from alignloop.server.i18n import choose

    assert choose(None, None) == "en"
    assert choose(None, "zh-TW;q=0.8, de") == "zh"
    assert choose(None, "de, en;q=0.1, zh;q=0.5") == "zh"
    assert choose("en", "zh") == "en"
    assert choose("xx", "zh-Hans-CN") == "zh"
    assert choose(None, "zh;q=0, en") == "en"
    assert choose(None, "en;q=abc, *") == "en"


def test_error_pages_say_what_happened_and_where_to_go(site):
    client, db, tokens = site
    r = client.get("/projects/demo/label", follow_redirects=False)
    sign_in(client, tokens["ann"])
    r = client.get("/projects/nope/guidelines")
    assert r.status_code == 404
    assert "<h1>Not found</h1>" in r.text and "Error 404" in r.text
    assert 'href="/">Go to your projects' in r.text and "nope" in r.text
    page = client.get("/projects/demo/guidelines").text
    r = client.post(
        "/projects/demo/guidelines/acknowledge",
        data={"version": "0" * 64, "csrf_token": csrf_of(page)},
        headers={"Referer": "http://testserver/projects/demo/guidelines"},
    )
    assert r.status_code == 409
    assert "This cannot be done now" in r.text and "is no version of project" in r.text
    assert 'href="/projects/demo/guidelines">Try again' in r.text
    r = client.get("/projects/demo/guidelines/acknowledge")
    assert r.status_code == 405 and "cannot be opened this way" in r.text
    r = client.get("/admin")
    assert r.status_code == 403 and "You cannot do this" in r.text
    r = client.get("/admin", headers={"Accept-Language": "zh"})
    assert "你不能执行此操作" in r.text and "前往你的项目" in r.text
    assert "此页面仅供管理员使用" in r.text  # the page's own words in the page's language
    client.cookies.clear()
    r = client.post("/logout", data={"csrf_token": "x"}, follow_redirects=False)
    assert r.status_code == 303  # no session: to the sign-in page, as before


def test_the_admin_page_exports_pairs_and_consensus_one_criterion_at_a_time(sqlite_db):
    from alignloop.server import assign
    from alignloop.server.models import Labeler

    db = sqlite_db
    prompts = [Prompt(id="q0", prompt="Question?")]
    completions = [
        Completion(id=f"q0-{j}", prompt_id="q0", completion=f"answer {j}") for j in range(3)
    ]
    service.create_project(
        db,
        name="two",
        criteria=["helpfulness", "harmlessness"],
        guidelines="# Rank\n",
        prompts=prompts,
        completions=completions,
        overlap=1,
    )
    boss = service.add_labeler(db, "boss", admin=True)
    service.add_labeler(db, "ann")
    with db.read() as session:
        ann_id = session.query(Labeler.id).filter_by(name="ann").scalar()
    assign.acknowledge(db, ann_id, "two", assign.guidelines_for(db, ann_id, "two")["version"])
    task = assign.next_task(db, ann_id, "two")
    ids = [[c["id"]] for c in task["completions"]]
    for criterion, groups in (("helpfulness", ids), ("harmlessness", ids[::-1])):
        assign.submit_ranking(
            db, ann_id, task["assignment_id"], assign.Submission(criterion, groups)
        )
    with TestClient(create_app(db)) as client:
        sign_in(client, boss)
        page = client.get("/admin/projects/two").text
        links = re.findall(r'href="(/admin/projects/two/export/[^"]+)"', page)
        assert links == [
            "/admin/projects/two/export/rankings",
            "/admin/projects/two/export/pairs?criterion=helpfulness",
            "/admin/projects/two/export/pairs?criterion=harmlessness",
            "/admin/projects/two/export/consensus?criterion=helpfulness",
            "/admin/projects/two/export/consensus?criterion=harmlessness",
        ]
        assert "one file per criterion" in page
        for link in links[1:]:
            r = client.get(link)
            criterion = link.rsplit("=", 1)[1]
            assert (
                r.status_code == 200
                and f"two-{link.split('/')[-1].split('?')[0]}-"
                in (r.headers["content-disposition"])
            )
            assert {json.loads(line)["criterion"] for line in r.text.splitlines()} == {criterion}
        r = client.get("/admin/projects/two/export/pairs")  # no criterion: refused, in words
        assert r.status_code == 422 and "one criterion at a time" in r.text
        assert "Something in the form is wrong" in r.text


def test_admins_deactivate_reactivate_and_renew_tokens_from_the_labelers_page(site):
    from alignloop.server.app import create_app as make_app

    client, db, tokens = site
    with TestClient(make_app(db)) as ann:  # ann signed in, in a browser of her own
        assert sign_in(ann, tokens["ann"]).status_code == 303
        assert ann.get("/", follow_redirects=False).status_code == 200

        sign_in(client, tokens["boss"])
        page = client.get("/admin/labelers").text
        assert 'action="/admin/labelers/ann/deactivate"' in page
        assert 'action="/admin/labelers/boss/deactivate"' not in page  # not oneself
        r = client.post("/admin/labelers/ann/deactivate", follow_redirects=False)
        assert r.status_code == 403  # no CSRF token
        r = client.post("/admin/labelers/ann/deactivate", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 200 and "ann is deactivated" in r.text
        assert re.search(r'data-labeler="ann" class="inactive">.*?deactivated', r.text, re.S)
        assert ann.get("/", follow_redirects=False).status_code == 303  # her session ended
        assert sign_in(ann, tokens["ann"]).status_code == 401  # and her token

        r = client.post("/admin/labelers/ann/reactivate", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 200 and "ann can sign in again" in r.text
        assert sign_in(ann, tokens["ann"]).status_code == 303

        r = client.post("/admin/labelers/ann/token", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 200 and r.headers["cache-control"] == "no-store"
        assert "ann has a new token" in r.text and "old token no longer works" in r.text
        new = re.search(r'id="new-token" class="token">([^<]+)<', r.text).group(1)
        assert ann.get("/", follow_redirects=False).status_code == 303
        assert sign_in(ann, tokens["ann"]).status_code == 401
        assert sign_in(ann, new).status_code == 303

        r = client.post("/admin/labelers/boss/deactivate", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 409 and "cannot deactivate yourself" in r.text
        assert "This cannot be done now" in r.text
        r = client.post("/admin/labelers/nobody/token", data={"csrf_token": csrf_of(page)})
        assert r.status_code == 404 and "no labeler named" in r.text
        # a labeler cannot do any of it
        form = ann.get("/").text
        r = ann.post("/admin/labelers/boss/token", data={"csrf_token": csrf_of(form)})
        assert r.status_code == 403


def test_the_review_page_shows_each_items_rankings_side_by_side_with_the_disagreement(site):
    from alignloop.server import assign
    from alignloop.server.models import Labeler

    client, db, tokens = site
    service.add_labeler(db, "bea")
    ranked = {}
    for name, flip in (("ann", False), ("bea", True)):
        with db.read() as session:
            labeler_id = session.query(Labeler.id).filter_by(name=name).scalar()
        version = assign.guidelines_for(db, labeler_id, "demo")["version"]
        assign.acknowledge(db, labeler_id, "demo", version)
        task = assign.next_task(db, labeler_id, "demo")
        ids = sorted(c["id"] for c in task["completions"])  # public ids, fixed order
        groups = [[i] for i in ids]
        if flip:
            groups[0], groups[1] = groups[1], groups[0]
        assign.submit_ranking(
            db,
            labeler_id,
            task["assignment_id"],
            assign.Submission(None, groups, rationale=f"{name} says {XSS}", flag_unsafe=flip),
        )
        ranked[name] = task["prompt"]
    assert ranked["ann"] == ranked["bea"]  # both got the same prompt (overlap 2)
    pid, other = ("p0", "p1") if ranked["ann"] == f"Prompt {XSS}" else ("p1", "p0")

    sign_in(client, tokens["boss"])
    project_page = client.get("/admin/projects/demo").text
    assert 'href="/admin/projects/demo/review"' in project_page
    assert f'href="/admin/projects/demo/review?prompt_id={pid}"' in project_page  # flagged
    page = client.get("/admin/projects/demo/review").text
    assert page.count('class="card item flagged"') == 1 and "1 of 1 items shown." in page
    assert "ann says &lt;script&gt;" in page and "<script>window" not in page
    assert "bea says" in page and "flagged unsafe" in page
    assert "ordered both ways: " in page and page.count('class="letter contested"') == 4
    assert "pairwise agreement 67%" in page  # 2 of the 3 pairs agree
    # the prompt's Markdown is rendered safely, the completions are text
    assert "&lt;script&gt;window.__pwned" in page and "<img src=x" not in page
    assert (
        client.get("/admin/projects/demo/review?only=flagged").text.count('class="card item') == 1
    )
    assert f'data-prompt-id="{pid}"' in page
    none = client.get(f"/admin/projects/demo/review?prompt_id={other}").text
    assert "0 of 0 items shown." in none and "No item matches" in none
    assert client.get("/admin/projects/nope/review").status_code == 404
    client.cookies.clear()
    sign_in(client, tokens["ann"])
    assert client.get("/admin/projects/demo/review").status_code == 403


def test_admins_create_a_project_from_files_on_the_page(site):
    client, db, tokens = site
    prompts = "\n".join(json.dumps({"id": f"n{i}", "prompt": f"Question {i}?"}) for i in range(2))
    completions = "\n".join(
        json.dumps({"id": f"n{i}-{j}", "prompt_id": f"n{i}", "completion": f"answer {j}"})
        for i in range(2)
        for j in range(3)
    )
    fields = {
        "name": "from-the-page",
        "criteria": "helpfulness, honesty",
        "overlap": "2",
        "assignment_ttl_min": "30",
        "gold_rate": "",
        "guidelines": "# Rank\n\nThe **best** first.",
    }

    def post(data, files, **extra):
        form = client.get("/admin/projects/new").text
        return client.post(
            "/admin/projects/new",
            data={**data, "csrf_token": csrf_of(form)},
            files=files,
            follow_redirects=False,
            **extra,
        )

    sign_in(client, tokens["ann"])
    assert client.get("/admin/projects/new").status_code == 403
    client.cookies.clear()
    sign_in(client, tokens["boss"])
    assert 'href="/admin/projects/new"' in client.get("/admin").text
    page = client.get("/admin/projects/new")
    assert page.status_code == 200 and 'enctype="multipart/form-data"' in page.text

    # A bad line: the form comes back, filled in, saying which file and line.
    bad = prompts + '\n{"id": "n9", "prompt": 3}\n'
    r = post(fields, {"prompts": ("p.jsonl", bad), "completions": ("c.jsonl", completions)})
    assert r.status_code == 422 and "The project was not created" in r.text
    assert "p.jsonl:3" in r.text and 'value="from-the-page"' in r.text
    assert "The **best** first." in r.text  # the guidelines typed are kept
    r = post(
        {**fields, "overlap": "two"},
        {"prompts": ("p.jsonl", prompts), "completions": ("c.jsonl", completions)},
    )
    assert r.status_code == 422 and "not a number" in r.text
    r = post(fields, {"prompts": ("p.jsonl", b"\xff\xfe"), "completions": ("c.jsonl", completions)})
    assert r.status_code == 422 and "p.jsonl is not UTF-8 text" in r.text
    r = post(fields, {"completions": ("c.jsonl", completions)})
    assert r.status_code == 422 and "the prompt file is missing" in r.text
    assert [p["name"] for p in service.list_projects(db)] == ["demo"]  # nothing half made

    r = post(fields, {"prompts": ("p.jsonl", prompts), "completions": ("c.jsonl", completions)})
    assert r.status_code == 303 and r.headers["location"] == "/admin/projects/from-the-page"
    (made,) = [p for p in service.list_projects(db) if p["name"] == "from-the-page"]
    assert made["criteria"] == ["helpfulness", "honesty"] and made["prompts"] == 2
    assert made["overlap"] == 2 and made["assignments_needed"] == 4
    assert "0 of 4 tasks done" in client.get(r.headers["location"]).text
    r = post(fields, {"prompts": ("p.jsonl", prompts), "completions": ("c.jsonl", completions)})
    assert r.status_code == 409 and "already exists" in r.text
    r = client.post("/admin/projects/new", data=fields, follow_redirects=False)
    assert r.status_code == 403  # no CSRF token
