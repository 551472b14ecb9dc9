"""The pages in a real headless Chromium (Debian's `chromium`, driven by Playwright
for Python) against a real server process (`alignloop serve`) on a free port:
sign in, acknowledge the guidelines, rank by keyboard and by dragging with a tie,
submit, see the next task; a completion holding markup shows as text; the admin page; a
personal project ("my own preferences") at a desk and on a phone.

Screenshots go to a temporary directory, or to docs/screenshots/ (the README shows
them) when ALIGNLOOP_SCREENSHOTS=1.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlalchemy import select

from alignloop.schema import Completion, Prompt
from alignloop.server import service
from alignloop.server.db import Database, upgrade
from alignloop.server.models import Labeler

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[2]
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
GUIDELINES = """# How to rank summaries

Rank the responses from **best to worst** by how well they summarize the document.

- A summary that invents facts is worse than a short one.
- Give two responses **the same rank** when you cannot tell them apart.
- Use *Flag as unsafe* for anything harmful, and *I cannot rank these* when no ranking
  makes sense.
"""

playwright_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason=f"{CHROMIUM} is missing: `apt-get install chromium` (scripts/test-services.sh "
        "does it where apt and root are available)",
    ),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    if os.environ.get("ALIGNLOOP_SCREENSHOTS") == "1":
        out = REPO / "docs" / "screenshots"
        out.mkdir(parents=True, exist_ok=True)
        return out
    return tmp_path_factory.mktemp("screenshots")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A labeling server process over a fresh SQLite file with one project, a
    labeler and an admin; yields {"url", "tokens", "db", "log"}."""
    root = tmp_path_factory.mktemp("browser")
    db = Database(f"sqlite:///{root / 'labels.db'}")
    upgrade(db)
    docs = [
        (
            "The council approved the new bridge after a two-year debate over its cost.",
            [
                "The council approved the bridge after two years of debate about cost.",
                "A bridge was approved.",
                XSS + " The council met.",
            ],
        ),
        (
            "Heavy rain flooded the valley road, closing it for three days.",
            [
                "Rain closed the valley road for three days.",
                "The road flooded.",
                "Sunny weather all week.",
            ],
        ),
        (
            "The library will open on Sundays starting in March.",
            ["From March the library opens on Sundays.", "The library opens.", "Libraries close."],
        ),
    ]
    prompts = [
        Prompt(id=f"doc{i}", prompt=f"Summarize: {text}") for i, (text, _) in enumerate(docs)
    ]
    completions = [
        Completion(id=f"doc{i}-{j}", prompt_id=f"doc{i}", completion=c, policy=f"policy-{j}")
        for i, (_, cs) in enumerate(docs)
        for j, c in enumerate(cs)
    ]
    service.create_project(
        db,
        name="news-summaries",
        criteria=["helpfulness"],
        guidelines=GUIDELINES,
        prompts=prompts,
        completions=completions,
        overlap=3,
    )
    service.create_project(
        db,
        name="two-criteria",
        criteria=["helpfulness", "harmlessness"],
        guidelines="# Two rankings per task\n",
        prompts=[Prompt(id="q0", prompt="First question?"), Prompt(id="q1", prompt="Second?")],
        completions=[
            Completion(id=f"q{i}-{j}", prompt_id=f"q{i}", completion=f"answer {j} to {i}")
            for i in range(2)
            for j in range(3)
        ],
        overlap=1,
    )
    tokens = {
        "ann": service.add_labeler(db, "ann"),
        "boss": service.add_labeler(db, "boss", admin=True),
        "cai": service.add_labeler(db, "cai"),
    }
    port = _free_port()
    log = root / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alignloop", "serve", "--db", str(db.url), "--port", str(port)],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url + "/login", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield {"url": url, "tokens": tokens, "db": db, "log": log}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        db.dispose()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def make_page(browser):
    """make_page(**context_options) -> a page of a new browser context (a window
    size, a locale, a colour scheme, touch); at the end of the test, no page may have
    logged a script error or met an unexpected HTTP error."""
    opened = []

    def make(**options):
        context = browser.new_context(**{"viewport": {"width": 1200, "height": 900}, **options})
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        failed: list[str] = []
        page.on(
            "response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None
        )
        opened.append((context, page, errors, failed))
        return page

    yield make
    for context, page, errors, failed in opened:
        context.close()
        expected = getattr(page, "expected_failures", set())
        assert [f for f in failed if f not in expected] == []
        assert len(errors) == len([f for f in failed if f in expected]), errors


@pytest.fixture
def page(make_page):
    return make_page()


def sign_in(page, server, who: str, shots: Path | None = None) -> None:
    page.goto(server["url"] + "/")
    assert page.url.startswith(server["url"] + "/login")
    page.fill("#token", server["tokens"][who])
    if shots:
        page.fill("#token", "")
        page.screenshot(path=str(shots / "sign-in.png"))
        page.fill("#token", server["tokens"][who])
    page.click("button[type=submit]")
    page.wait_for_url(server["url"] + "/")


def open_task(page, server, who: str, project: str) -> None:
    """Sign `who` in and open `project`'s labeling page at its first task."""
    sign_in(page, server, who)
    page.goto(server["url"] + f"/projects/{project}/label")
    page.wait_for_selector("#task:not([hidden])")


def card(page, letter: str):
    return page.locator("article.completion", has_text=f"Response {letter}")


def test_sign_in_acknowledge_rank_by_keyboard_and_drag_with_a_tie_then_next(page, server, shots):
    sign_in(page, server, "ann", shots)
    page.locator("li.card", has_text="news-summaries").get_by_text("Read the guidelines").click()
    page.wait_for_selector("#acknowledge")
    assert page.locator("article.guidelines strong").first.inner_text() == "best to worst"
    page.screenshot(path=str(shots / "guidelines.png"), full_page=True)
    page.click("#acknowledge")
    page.wait_for_url("**/projects/news-summaries/label")
    page.wait_for_selector("#task:not([hidden])")
    first_prompt = page.inner_text("#prompt")
    assert first_prompt.startswith("Summarize: The council")  # the prompt under way first
    assert page.locator("article.completion").count() == 3

    # The completion with markup shows it as text; nothing ran.
    xss_card = page.locator("article.completion", has_text="<script>")
    assert xss_card.count() == 1
    assert "<script>window.__pwned = 1</script>" in xss_card.inner_text()
    assert page.evaluate("window.__pwned") is None
    assert page.locator("article.completion img").count() == 0
    page.screenshot(path=str(shots / "task.png"), full_page=True)

    # Keyboard: A and B both get rank 1 (a tie) ...
    assert page.is_disabled("#submit")
    card(page, "A").focus()
    page.keyboard.press("1")
    card(page, "B").focus()
    page.keyboard.press("1")
    # ... and C is dragged to rank 2.
    card(page, "C").drag_to(page.locator('#ranks li[data-rank="2"]'))
    badges = [card(page, x).locator(".badge").inner_text() for x in "ABC"]
    assert badges == ["rank 1", "rank 1", "rank 2"]
    assert page.locator('#ranks li[data-rank="1"] .chip').all_inner_texts() == ["A", "B"]
    texts = {x: card(page, x).locator(".text").inner_text() for x in "ABC"}
    page.fill("#rationale", "A and B say the same; C is off.")
    assert page.is_enabled("#submit")
    page.screenshot(path=str(shots / "ranked.png"), full_page=True)

    page.click("#submit")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent !== p", arg=first_prompt
    )
    page.wait_for_selector("#message:has-text('Saved.')")
    assert page.inner_text("#progress").startswith("You have finished 1 task")
    assert page.is_disabled("#submit")  # a fresh board

    # What the server stored: A and B tied, then C, in the files' ids.
    rankings = service.export_project(server["db"], "news-summaries", "rankings")
    (stored,) = [r for r in rankings if r.labeler == "ann"]
    text_of = {c.id: c.completion for c in _completions(server["db"])}
    assert [sorted(text_of[i] for i in g) for g in stored.ranking] == [
        sorted([texts["A"], texts["B"]]),
        [texts["C"]],
    ]
    assert stored.rationale == "A and B say the same; C is off."


def test_two_criteria_cannot_rank_and_skip(page, server):
    sign_in(page, server, "cai")
    page.goto(server["url"] + "/projects/two-criteria/label")
    page.wait_for_url("**/projects/two-criteria/guidelines")  # not acknowledged yet
    page.click("#acknowledge")
    page.wait_for_selector("#task:not([hidden])")
    prompt = page.inner_text("#prompt")
    assert page.inner_text("#criterion") == "helpfulness"
    assert page.inner_text("#criterion-step") == "(criterion 1 of 2)"
    for letter, digit in zip("ABC", "321", strict=True):
        card(page, letter).focus()
        page.keyboard.press(digit)
    card(page, "A").focus()
    page.keyboard.press("0")  # taken back: not everything is ranked any more
    assert page.is_disabled("#submit")
    page.keyboard.press("3")
    page.click("#submit")
    page.wait_for_selector("#message:has-text('Now rank the same responses by harmlessness')")
    assert page.inner_text("#criterion") == "harmlessness"
    assert page.inner_text("#prompt") == prompt
    assert page.is_disabled("#submit")
    page.check("#unrankable")
    page.check("#unsafe")
    page.click("#submit")
    page.wait_for_function("(p) => document.querySelector('#prompt').textContent !== p", arg=prompt)
    page.click("#skip")
    page.wait_for_selector("#done:not([hidden])")

    rankings = service.export_project(server["db"], "two-criteria", "rankings")
    assert [(r.criterion, r.unrankable, len(r.ranking)) for r in rankings] == [
        ("helpfulness", False, 3),
        ("harmlessness", True, 0),
    ]
    status = service.project_status(server["db"], "two-criteria")
    assert status["labelers"]["cai"]["skipped"] == 1
    assert [f["criterion"] for f in status["flagged_unsafe"]] == ["harmlessness"]


def _completions(db):
    with db.read() as session:
        project = service.get_project(session, "news-summaries")
        return service.project_records(session, project).completions


def _label_the_rest(db) -> None:
    """Three more labelers rank every task left through the library: one by text
    length (longest first), one the same with the last two swapped, one with the
    first two tied; one of them flags the task with markup."""
    from alignloop.server import assign

    for name in ("bea", "cem", "dia"):
        service.add_labeler(db, name)
        with db.read() as session:
            labeler_id = session.scalar(select(Labeler.id).where(Labeler.name == name))
        assign.acknowledge(
            db,
            labeler_id,
            "news-summaries",
            assign.guidelines_for(db, labeler_id, "news-summaries")["version"],
        )
        while (task := assign.next_task(db, labeler_id, "news-summaries")) is not None:
            by_length = sorted(task["completions"], key=lambda c: -len(c["text"]))
            groups = [[c["id"]] for c in by_length]
            if name == "cem":
                groups[-2:] = groups[-1:-3:-1]
            if name == "dia":
                groups = [groups[0] + groups[1], *groups[2:]]
            markup = "<script>" in " ".join(c["text"] for c in task["completions"])
            assign.submit_ranking(
                db,
                labeler_id,
                task["assignment_id"],
                assign.Submission(
                    None,
                    groups,
                    flag_unsafe=markup and name == "bea",
                    rationale="markup in a response" if markup and name == "bea" else "",
                ),
            )


def test_admin_sees_progress_labelers_agreement_and_flags(page, server, shots):
    _label_the_rest(server["db"])
    sign_in(page, server, "boss")
    page.click("text=Admin")
    page.click("text=news-summaries")
    page.wait_for_selector("text=Progress")
    # ann's second task is still pending in her browser: it holds one slot of its prompt
    assert "2 of 3 prompts complete" in page.inner_text("main")
    for name in ("ann", "bea", "cem", "dia"):
        assert page.locator("td", has_text=name).count() >= 1
    assert page.locator("td", has_text="markup in a response").count() == 1
    page.screenshot(path=str(shots / "admin.png"), full_page=True)

    # Per item: every labeler's ranking side by side, the disagreements marked.
    page.click("#review")
    page.wait_for_selector("#count")
    assert page.locator("article.item").count() == 3
    assert page.locator("article.item.flagged").count() == 1
    flagged = page.locator("article.item.flagged")
    assert "<script>window.__pwned = 1</script>" in flagged.inner_text()  # as text
    assert flagged.locator("tbody tr").count() == 3  # overlap 3: three labelers
    assert page.locator(".letter.contested").count() > 0
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(shots / "admin-review.png"), full_page=True)
    page.select_option("select[name=only]", "flagged")
    page.click(".filters button")
    page.wait_for_url("**only=flagged**")
    assert page.locator("article.item").count() == 1


def test_a_labeler_cannot_open_admin_pages(page, server):
    sign_in(page, server, "ann")
    url = server["url"] + "/admin/projects/news-summaries"
    page.expected_failures = {f"403 {url}"}
    response = page.goto(url)
    assert response.status == 403
    assert "this page is for admins" in page.inner_text("main")


def test_the_server_logged_no_secret(server):
    log = server["log"].read_text()
    assert "GET /login" in log  # the access log is there
    for token in server["tokens"].values():
        assert token not in log


# --- the board after every action ---------------------------------------------------


def _fresh_project(
    server,
    name: str,
    *,
    criteria: list[str],
    n_prompts: int,
    k: int = 4,
    prompt=lambda name, i: f"Prompt {i} of {name}: describe topic {i}.",
    completion=lambda name, i, j: f"Answer {j} to prompt {i} of {name}.",
) -> str:
    """A project of its own with one labeler who has acknowledged its guidelines;
    returns the labeler's name (their token is in server["tokens"])."""
    from alignloop.server import assign

    db = server["db"]
    service.create_project(
        db,
        name=name,
        criteria=criteria,
        guidelines="# Rank them\n\nThe **best** first.\n",
        prompts=[Prompt(id=f"{name}-{i}", prompt=prompt(name, i)) for i in range(n_prompts)],
        completions=[
            Completion(
                id=f"{name}-{i}-{j}", prompt_id=f"{name}-{i}", completion=completion(name, i, j)
            )
            for i in range(n_prompts)
            for j in range(k)
        ],
        overlap=1,
    )
    who = f"{name}-labeler"
    server["tokens"][who] = service.add_labeler(db, who)
    labeler_id = _labeler_id(db, who)
    version = assign.guidelines_for(db, labeler_id, name)["version"]
    assign.acknowledge(db, labeler_id, name, version)
    return who


def _labeler_id(db, name: str) -> int:
    with db.read() as session:
        return session.scalar(select(Labeler.id).where(Labeler.name == name))


def _pending_task(server, who: str, project: str) -> dict | None:
    """The task the server holds for the labeler now (their pending assignment)."""
    from alignloop.server import assign

    return assign.next_task(server["db"], _labeler_id(server["db"], who), project)


def assert_board(page, server, who: str, project: str, criterion: str) -> dict:
    """The page shows exactly the server's current task of `who`: its prompt, its K
    responses (Response A, B, ... in the task's order, nothing else), every rank slot
    empty, Submit disabled, the criterion and the progress."""
    page.wait_for_selector("#task:not([hidden])")
    task = _pending_task(server, who, project)
    assert task is not None
    k = len(task["completions"])
    assert page.inner_text("#prompt").strip() == task["prompt"]
    cards = page.locator("article.completion")
    assert cards.count() == k
    assert [cards.nth(i).locator(".text").inner_text() for i in range(k)] == [
        c["text"] for c in task["completions"]
    ]
    assert [cards.nth(i).locator("header strong").inner_text() for i in range(k)] == [
        f"Response {chr(65 + i)}" for i in range(k)
    ]
    assert [cards.nth(i).locator(".badge").inner_text() for i in range(k)] == ["not ranked"] * k
    assert page.locator("#ranks [data-rank]").count() == k
    assert page.locator("#ranks [data-rank] .chip").count() == 0
    assert page.locator("#pool .chip").all_inner_texts() == [chr(65 + i) for i in range(k)]
    assert page.inner_text("#criterion") == criterion
    assert page.is_disabled("#submit")
    assert not page.is_checked("#unrankable") and page.input_value("#rationale") == ""
    assert page.inner_text("#progress") == progress_text(task)
    return task


def progress_text(task: dict) -> str:
    p = task["progress"]
    return (
        f"You have finished {p['labeler_done']} {'task' if p['labeler_done'] == 1 else 'tasks'}"
        f" · the project has {p['project_tasks_done']} of {p['project_tasks']} tasks done"
    )


def rank_all(page, how: str) -> None:
    """Rank every response, best first in letter order, by keyboard or by mouse."""
    cards = page.locator("article.completion")
    for i in range(cards.count()):
        if how == "keyboard":  # the board starts on Response A; Tab goes on
            assert focused(page) == f"card {chr(65 + i)}"
            page.keyboard.press(str(i + 1))
            page.keyboard.press("Tab")
        else:
            card(page, chr(65 + i)).drag_to(page.locator(f'#ranks [data-rank="{i + 1}"]'))
    assert page.is_enabled("#submit")


def submit_and_wait(page, prompt_before: str | None = None, how: str = "mouse") -> None:
    """Submit (Ctrl+Enter, or a click) and wait for the next criterion's board, or,
    given the prompt before, for the next task's (or the end)."""
    if how == "keyboard":
        page.keyboard.press("Control+Enter")
    else:
        page.click("#submit")
    if prompt_before is None:
        page.wait_for_selector("#message:has-text('Now rank the same responses')")
    else:
        page.wait_for_function(
            "(p) => !document.querySelector('#task').hidden"
            " && document.querySelector('#prompt').textContent.trim() !== p"
            " || !document.querySelector('#done').hidden",
            arg=prompt_before,
        )


@pytest.mark.parametrize("how", ["keyboard", "mouse"])
def test_the_board_holds_only_the_current_task_after_every_action(page, server, how):
    project = f"ghosts-{how}"
    who = _fresh_project(server, project, criteria=["helpfulness", "harmlessness"], n_prompts=4)
    sign_in(page, server, who)
    page.goto(server["url"] + f"/projects/{project}/label")

    def cannot_rank() -> None:
        if how == "keyboard":
            page.keyboard.press("u")
            assert page.is_checked("#unrankable")
        else:
            page.check("#unrankable")

    # Task 1: ranked, then the second criterion: the same prompt, a fresh board.
    t = assert_board(page, server, who, project, "helpfulness")
    rank_all(page, how)
    submit_and_wait(page, how=how)
    assert_board(page, server, who, project, "harmlessness")
    assert _pending_task(server, who, project)["assignment_id"] == t["assignment_id"]
    # ... "I cannot rank these" on the second criterion: the next task.
    cannot_rank()
    submit_and_wait(page, t["prompt"], how)
    t = assert_board(page, server, who, project, "helpfulness")

    # Task 2: skipped (its cards were never ranked: they must not stay behind).
    if how == "keyboard":
        page.keyboard.press("s")
    else:
        page.click("#skip")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent.trim() !== p", arg=t["prompt"]
    )
    t = assert_board(page, server, who, project, "helpfulness")

    # Task 3: cannot rank on the first criterion, half ranked on the second.
    cannot_rank()
    submit_and_wait(page, how=how)
    assert_board(page, server, who, project, "harmlessness")
    if how == "keyboard":
        page.keyboard.press("1")  # the focus is on Response A
    else:
        card(page, "A").locator('.rank-button[data-rank="1"]').click()
    cannot_rank()
    submit_and_wait(page, t["prompt"], how)
    t = assert_board(page, server, who, project, "helpfulness")

    # Task 4, the last: both criteria ranked; then nothing is left and no card shows.
    rank_all(page, how)
    submit_and_wait(page, how=how)
    assert_board(page, server, who, project, "harmlessness")
    rank_all(page, how)
    submit_and_wait(page, t["prompt"], how)
    page.wait_for_selector("#done:not([hidden])")
    assert page.locator("article.completion:visible").count() == 0
    assert _pending_task(server, who, project) is None
    rankings = service.export_project(server["db"], project, "rankings")
    assert len(rankings) == 6 and sum(r.unrankable for r in rankings) == 3


# --- the keyboard -----------------------------------------------------------------------


def focused(page) -> str:
    """What has the focus: "card A", "rationale", "unrankable", ..."""
    return page.evaluate(
        """() => {
        const a = document.activeElement;
        if (a.matches('article.completion')) return 'card ' + a.querySelector('header strong')
            .textContent.slice(-1);
        return a.id || a.tagName.toLowerCase();
    }"""
    )


def badges(page) -> list[str]:
    return page.locator("article.completion .badge").all_inner_texts()


def test_keyboard_ranking_keeps_the_focus_on_the_responses_and_out_of_the_rationale(page, server):
    project = "keyboard"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=2)
    open_task(page, server, who, project)
    first_prompt = page.inner_text("#prompt")
    assert focused(page) == "card A"  # a new task starts on its first response

    # A digit ranks the response with the focus, which keeps it; Tab goes on to the
    # next response (never past the unranked ones into the rationale).
    page.keyboard.press("2")
    assert focused(page) == "card A" and badges(page)[0] == "rank 2"
    for letter, digit in zip("BCD", "134", strict=True):
        page.keyboard.press("Tab")
        assert focused(page) == f"card {letter}"
        page.keyboard.press(digit)
        assert focused(page) == f"card {letter}"
    assert badges(page) == ["rank 2", "rank 1", "rank 3", "rank 4"]
    page.keyboard.press("9")  # beyond K: nothing
    page.keyboard.press("ArrowLeft")
    assert focused(page) == "card C"
    page.keyboard.press("0")  # taken back ...
    assert badges(page)[2] == "not ranked" and page.is_disabled("#submit")
    page.keyboard.press("3")  # ... and ranked again
    assert page.input_value("#rationale") == ""

    # Past the last response, Tab reaches the options; a digit there types nothing.
    page.keyboard.press("ArrowRight")
    page.keyboard.press("Tab")
    assert focused(page) == "unrankable"
    page.keyboard.press("5")
    assert page.input_value("#rationale") == "" and badges(page)[3] == "rank 4"
    assert "Focus a response first" in page.inner_text("#message")

    # The help overlay (?) and the guidelines (g) open over the work and close with
    # Escape, which gives the focus back to the last response.
    page.keyboard.press("?")
    assert page.is_visible("#help") and "Skip this prompt" in page.inner_text("#help")
    page.keyboard.press("Escape")
    assert page.is_hidden("#help") and focused(page) == "card D"
    page.keyboard.press("g")
    assert page.is_visible("#guidelines-panel")
    assert page.locator("#guidelines-panel strong").first.inner_text() == "best"
    page.keyboard.press("Escape")
    assert page.is_hidden("#guidelines-panel") and focused(page) == "card D"
    assert badges(page) == ["rank 2", "rank 1", "rank 3", "rank 4"]  # the work is kept

    # Typing in the rationale is typing (digits too); Escape leaves it for the
    # responses; Ctrl+Enter submits from anywhere.
    page.click("#rationale")
    page.keyboard.type("B is best, 3 facts")
    page.keyboard.press("Escape")
    assert focused(page) == "card D"
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent !== p", arg=first_prompt
    )
    assert focused(page) == "card A" and badges(page) == ["not ranked"] * 4
    (stored,) = service.export_project(server["db"], project, "rankings")
    assert stored.rationale == "B is best, 3 facts" and len(stored.ranking) == 4

    # s skips; Enter on a response submits once everything is ranked.
    second_prompt = page.inner_text("#prompt")
    page.keyboard.press("s")
    page.wait_for_selector("#done:not([hidden])")
    assert second_prompt != first_prompt
    status = service.project_status(server["db"], project)
    assert status["labelers"][who]["skipped"] == 1


def test_enter_on_a_response_submits_a_complete_ranking(page, server):
    project = "keyboard-enter"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=1, k=3)
    open_task(page, server, who, project)
    page.keyboard.press("1")
    page.keyboard.press("Enter")  # not everything is ranked: nothing happens
    page.keyboard.press("Tab")
    page.keyboard.press("2")
    page.keyboard.press("Tab")
    page.keyboard.press("2")  # a tie for second
    page.keyboard.press("Enter")
    page.wait_for_selector("#done:not([hidden])")
    (stored,) = service.export_project(server["db"], project, "rankings")
    assert [len(g) for g in stored.ranking] == [1, 2]


# --- the page at 1280x900 -----------------------------------------------------------------

LONG = (
    "The committee met on Tuesday to review the budget. After a long discussion of the "
    "costs of maintenance, staffing and the new library wing, members agreed to postpone "
    "the vote on the library until the spring, when the final estimates are expected. "
)


def within(page, selector: str) -> list[str]:
    """The elements matching `selector` that are not wholly inside the window."""
    return page.evaluate(
        """(sel) => [...document.querySelectorAll(sel)].filter((e) => {
            const r = e.getBoundingClientRect();
            // a pixel of slack: layout positions are fractional
            return r.top < -1 || r.left < -1 || r.bottom > innerHeight + 1
                || r.right > innerWidth + 1;
        }).map((e) => e.dataset.rank || e.dataset.id || e.id)""",
        selector,
    )


def test_the_whole_task_fits_1280x900_and_a_drag_to_the_worst_slot_stays_in_view(
    make_page, server, shots
):
    page = make_page(viewport={"width": 1280, "height": 900})
    project = "desktop"
    who = _fresh_project(
        server,
        project,
        criteria=["helpfulness"],
        n_prompts=1,
        prompt=lambda name, i: (
            "Summarize the **minutes** below in *two* sentences.\n\n"
            "- keep the decision\n- drop the small talk\n\n"
            "See [the notes](javascript:alert(1)). <img src=x onerror=alert(1)>\n\n" + LONG * 2
        ),
        completion=lambda name, i, j: f"**Not bold**: summary {j}. " + LONG * (j + 1),
    )
    open_task(page, server, who, project)

    # The prompt's Markdown as elements, with no raw ** and no live markup; the
    # responses are model output: text, asterisks and all.
    assert page.locator("#prompt strong").inner_text() == "minutes"
    assert page.locator("#prompt em").inner_text() == "two"
    assert page.locator("#prompt li").all_inner_texts() == [
        "keep the decision",
        "drop the small talk",
    ]
    assert "**" not in page.inner_text("#prompt") and "<img src=x" in page.inner_text("#prompt")
    assert page.locator("#prompt img, #prompt a").count() == 0
    assert "See the notes (javascript:alert(1))." in page.inner_text("#prompt")
    assert page.locator("article.completion .text").first.inner_text().startswith("**Not bold**")

    # No scrolling: the prompt, every response, every slot and Submit are in the window.
    assert page.evaluate("document.documentElement.scrollHeight <= innerHeight")
    parts = "#prompt, article.completion, #pool, #ranks [data-rank], #submit, #skip, #rationale"
    assert within(page, parts) == []
    page.screenshot(path=str(shots / "desktop.png"))

    card(page, "A").drag_to(page.locator('#ranks [data-rank="4"]'))
    assert badges(page)[0] == "rank 4"
    assert page.locator('#ranks [data-rank="4"] .chip').all_inner_texts() == ["A"]
    assert within(page, parts) == [] and page.evaluate("scrollY") == 0
    # The letter itself can be dragged on, and back to "not ranked".
    page.locator('#ranks [data-rank="4"] .chip').drag_to(page.locator('#ranks [data-rank="3"]'))
    assert badges(page)[0] == "rank 3"
    for letter, rank in zip("BCD", "124", strict=True):
        card(page, letter).locator(f'.rank-button[data-rank="{rank}"]').click()
    assert badges(page) == ["rank 3", "rank 1", "rank 2", "rank 4"]
    page.screenshot(path=str(shots / "desktop-ranked.png"))

    # The guidelines open beside the task and close again; the work is as it was.
    page.click("#show-guidelines")
    assert page.is_visible("#guidelines-panel") and page.is_visible("#prompt")
    assert page.locator("#guidelines-panel strong").first.inner_text() == "best"
    assert "**" not in page.inner_text("#guidelines-panel")
    page.screenshot(path=str(shots / "guidelines-panel.png"))
    page.locator("#guidelines-panel .close").click()
    assert page.is_hidden("#guidelines-panel")
    assert badges(page) == ["rank 3", "rank 1", "rank 2", "rank 4"]
    assert page.is_enabled("#submit")


# --- the second criterion, skipping, drafts, progress -----------------------------------------


def in_view(page, selector: str) -> bool:
    return within(page, selector) == [] and page.locator(selector).count() > 0


def test_the_second_criterion_is_announced_in_view_and_skipping_after_the_first_is_explained(
    make_page, server
):
    page = make_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    project = "second-criterion"
    who = _fresh_project(server, project, criteria=["helpfulness", "honesty"], n_prompts=2, k=3)
    open_task(page, server, who, project)
    first = _pending_task(server, who, project)
    assert page.evaluate("scrollY") == 0 and focused(page) == "card A"  # the prompt first
    assert page.inner_text("#skip-note") == ""
    for letter, rank in zip("ABC", "213", strict=True):
        card(page, letter).locator(f'.rank-button[data-rank="{rank}"]').tap()
    page.locator("#submit").scroll_into_view_if_needed()
    assert not in_view(page, "#criterion-heading")  # on a phone the heading is far above
    page.locator("#submit").tap()
    page.wait_for_selector("#message:has-text('Now rank the same responses by honesty')")
    assert page.inner_text("#message") == (
        "Saved your helpfulness ranking. Now rank the same responses by honesty (criterion 2 "
        "of 2): the board above is fresh for it."
    )
    assert page.inner_text("#criterion") == "honesty"
    assert page.inner_text("#criterion-step") == "(criterion 2 of 2)"
    assert in_view(page, "#criterion-heading") and in_view(page, "#message")
    assert badges(page) == ["not ranked"] * 3

    # Skipping now is allowed, and the page says beforehand what it means.
    assert page.inner_text("#skip-note") == (
        "You have ranked this prompt by helpfulness: skipping it now drops that ranking too, "
        "and the prompt goes to another labeler."
    )
    page.locator("#skip").scroll_into_view_if_needed()
    assert not in_view(page, "#prompt")
    page.locator("#skip").tap()
    page.wait_for_selector("#message:has-text('Skipped')")
    assert page.inner_text("#prompt").strip() != first["prompt"]
    assert in_view(page, "#prompt") and in_view(page, "#message")  # the new prompt's top
    assert page.inner_text("#skip-note") == "" and page.inner_text("#criterion") == "helpfulness"
    assert service.export_project(server["db"], project, "rankings") == []  # never exported


def drafts(page) -> dict:
    return page.evaluate(
        """() => Object.fromEntries(Object.keys(localStorage)
            .filter((k) => k.startsWith('alignloop.draft.')).map((k) => [k, localStorage[k]]))"""
    )


def test_a_half_done_ranking_survives_a_reload_per_criterion(page, server):
    project = "drafts"
    who = _fresh_project(server, project, criteria=["helpfulness", "honesty"], n_prompts=2, k=3)
    open_task(page, server, who, project)
    aid = _pending_task(server, who, project)["assignment_id"]
    page.keyboard.press("2")
    page.keyboard.press("Tab")
    page.keyboard.press("1")
    page.check("#unsafe")
    page.fill("#rationale", "half way")
    assert list(drafts(page)) == [f"alignloop.draft.{who}.{aid}.helpfulness"]

    page.reload()
    page.wait_for_selector("#task:not([hidden])")
    assert badges(page) == ["rank 2", "rank 1", "not ranked"]
    assert page.locator('#ranks [data-rank="1"] .chip').all_inner_texts() == ["B"]
    assert page.is_checked("#unsafe") and page.input_value("#rationale") == "half way"
    assert "unfinished ranking of this task was restored" in page.inner_text("#message")

    card(page, "C").focus()
    page.keyboard.press("3")
    page.click("#submit")
    page.wait_for_selector("#message:has-text('Now rank the same responses by honesty')")
    assert drafts(page) == {}  # cleared on submit
    assert badges(page) == ["not ranked"] * 3 and not page.is_checked("#unsafe")
    card(page, "A").focus()
    page.keyboard.press("1")

    page.reload()  # the second criterion's own draft comes back with it
    page.wait_for_selector("#task:not([hidden])")
    assert page.inner_text("#criterion") == "honesty"
    assert badges(page) == ["rank 1", "not ranked", "not ranked"]
    assert page.input_value("#rationale") == "" and not page.is_checked("#unsafe")
    (stored,) = service.export_project(server["db"], project, "rankings", include_gold=True) or [
        None
    ]
    assert stored is None  # the assignment is not done yet: nothing exported


def test_one_progress_unit_on_every_page(make_page, server):
    page = make_page()
    project = "progress"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=3, k=2)
    open_task(page, server, who, project)
    assert page.inner_text("#progress") == (
        "You have finished 0 tasks · the project has 0 of 3 tasks done"
    )
    page.keyboard.press("1")
    page.keyboard.press("Tab")
    page.keyboard.press("2")
    prompt = page.inner_text("#prompt")
    page.keyboard.press("Enter")
    page.wait_for_function("(p) => document.querySelector('#prompt').textContent !== p", arg=prompt)
    assert page.inner_text("#progress") == (
        "You have finished 1 task · the project has 1 of 3 tasks done"
    )
    page.goto(server["url"] + "/")
    home = page.locator("li.card", has_text=project).locator(".progress-text")
    assert home.inner_text() == "1 of 3 tasks done"

    admin = make_page()  # a browser of its own
    sign_in(admin, server, "boss")
    admin.goto(server["url"] + "/admin")
    row = admin.locator("tr", has_text=project).locator(".progress-text")
    assert row.inner_text() == "1 of 3 tasks done"
    admin.goto(server["url"] + f"/admin/projects/{project}")
    assert admin.locator(".progress-text").inner_text() == "1 of 3 tasks done"
    assert "3 prompts × overlap 1" in admin.inner_text("main")


# --- a phone, the dark theme, Chinese -----------------------------------------------------


def touch_drag(page, source, target) -> None:
    """A finger drags from the middle of `source` to the middle of `target`: touch
    events through the DevTools protocol, which Chromium turns into pointer events
    of type "touch" (and a scroll, where the page lets the finger scroll)."""
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, *point: float) -> None:
        points = [{"x": point[0], "y": point[1]}] if point else []
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    a, b = source.bounding_box(), target.bounding_box()
    x0, y0 = a["x"] + a["width"] / 2, a["y"] + a["height"] / 2
    x1, y1 = b["x"] + b["width"] / 2, b["y"] + b["height"] / 2
    touch("touchStart", x0, y0)
    for i in range(1, 11):
        touch("touchMove", x0 + (x1 - x0) * i / 10, y0 + (y1 - y0) * i / 10)
    for _ in range(3):  # the finger rests before it lifts: no fling scrolling on after
        time.sleep(0.05)
        touch("touchMove", x1, y1)
    touch("touchEnd")
    cdp.detach()


def test_a_phone_ranks_by_touch_dragging_and_tapping(make_page, server, shots):
    page = make_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    project = "phone"
    who = _fresh_project(
        server,
        project,
        criteria=["helpfulness"],
        n_prompts=1,
        k=3,
        prompt=lambda name, i: "Summarize the **minutes** in one sentence.\n\n" + LONG,
        completion=lambda name, i, j: f"Summary {j}: " + LONG[: 60 * (j + 1)],
    )
    open_task(page, server, who, project)
    assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")  # no sideways
    xs = {round(c.bounding_box()["x"]) for c in page.locator("article.completion").all()}
    assert len(xs) == 1  # one column

    # A finger on a response's text scrolls the page; on its grip, it drags.
    cards = page.locator("article.completion")
    touch_drag(page, cards.nth(1).locator(".text"), page.locator('#ranks [data-rank="1"]'))
    assert badges(page) == ["not ranked"] * 3
    page.evaluate("scrollTo(0, 0)")
    touch_drag(page, cards.nth(0).locator(".grip"), page.locator('#ranks [data-rank="3"]'))
    assert badges(page) == ["rank 3", "not ranked", "not ranked"]
    chip_b = page.locator('#pool .chip:has-text("B")')
    touch_drag(page, chip_b, page.locator('#ranks [data-rank="1"]'))
    assert badges(page) == ["rank 3", "rank 1", "not ranked"]
    # Scrolled down to the last response, the slots are still there to drop on.
    cards.nth(2).scroll_into_view_if_needed()
    assert in_view(page, ".strip") and in_view(page, '#ranks [data-rank="2"]')
    touch_drag(page, cards.nth(2).locator(".grip"), page.locator('#ranks [data-rank="2"]'))
    assert badges(page) == ["rank 3", "rank 1", "rank 2"]
    cards.nth(2).locator('.rank-button[data-rank="1"]').tap()  # a tap on a rank button
    assert badges(page) == ["rank 3", "rank 1", "rank 1"]
    page.evaluate("scrollTo(0, 0)")
    page.screenshot(path=str(shots / "phone.png"))
    page.screenshot(path=str(shots / "phone-full.png"), full_page=True)
    page.locator("#submit").tap()
    page.wait_for_selector("#done:not([hidden])")
    (stored,) = service.export_project(server["db"], project, "rankings")
    assert [len(g) for g in stored.ranking] == [2, 1]


def _luminance(css_color: str) -> float:
    r, g, b = (int(x) for x in re.findall(r"\d+", css_color)[:3])
    return (0.2126 * r + 0.7152 * g + 0.0722 * b) / 255


def test_the_dark_theme_follows_the_system(make_page, server, shots):
    project = "dark"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=1)
    colours = {}
    for scheme in ("light", "dark"):
        page = make_page(viewport={"width": 1280, "height": 900}, color_scheme=scheme)
        sign_in(page, server, who)
        page.goto(server["url"] + f"/projects/{project}/label")
        page.wait_for_selector("#task:not([hidden])")
        colours[scheme] = page.evaluate(
            """() => ['body', 'article.completion', '#rationale', '#skip'].map((s) => {
                const c = getComputedStyle(document.querySelector(s));
                return [c.backgroundColor, c.color];
            })"""
        )
        if scheme == "dark":
            page.keyboard.press("2")
            page.keyboard.press("Tab")
            page.keyboard.press("1")
            page.screenshot(path=str(shots / "dark.png"))
    for background, text in colours["light"]:
        assert _luminance(background) > 0.8 and _luminance(text) < 0.3
    for background, text in colours["dark"]:
        assert _luminance(background) < 0.2 and _luminance(text) > 0.7


def test_the_interface_in_chinese_with_a_switch_to_english(make_page, server, shots):
    page = make_page(viewport={"width": 1280, "height": 900}, locale="zh-CN")
    project = "chinese"
    who = _fresh_project(
        server,
        project,
        criteria=["helpfulness", "harmlessness"],
        n_prompts=2,
        k=3,
        prompt=lambda name, i: f"用一句话**总结**这段文字 {i}：委员会讨论了预算。",
        completion=lambda name, i, j: f"回答 {j}：委员会推迟了图书馆的投票。",
    )
    sign_in(page, server, who)
    assert page.locator("html").get_attribute("lang") == "zh-Hans"
    assert page.inner_text("h1") == "项目"
    page.goto(server["url"] + f"/projects/{project}/label")
    page.wait_for_selector("#task:not([hidden])")
    assert page.inner_text("#submit") == "提交排序" and page.inner_text("#skip") == "跳过这个提示"
    assert badges(page) == ["未排序"] * 3
    assert page.locator("article.completion header strong").all_inner_texts() == [
        "回答 A",
        "回答 B",
        "回答 C",
    ]
    assert page.inner_text("#progress") == "你已完成 0 个任务 · 项目已完成 0 / 2 个任务"
    assert page.inner_text("#criterion-step") == "（第 1 个标准，共 2 个）"
    assert page.inner_text("#prompt strong") == "总结"
    page.keyboard.press("1")
    page.keyboard.press("Tab")
    page.keyboard.press("2")
    assert badges(page) == ["第 1 名", "第 2 名", "未排序"]
    page.screenshot(path=str(shots / "chinese.png"))
    page.keyboard.press("?")
    assert "跳过这个提示" in page.inner_text("#help")
    page.keyboard.press("Escape")
    page.keyboard.press("Tab")
    page.keyboard.press("3")
    page.keyboard.press("Enter")
    page.wait_for_selector("#message:has-text('现在请按“harmlessness”给同样的回答排序')")

    # The switch: English from now on, for this browser, on every page; the work stays.
    page.click("header.top .languages a[lang=en]")
    page.wait_for_selector("#task:not([hidden])")
    assert page.locator("html").get_attribute("lang") == "en"
    assert page.inner_text("#submit") == "Submit ranking"
    assert page.inner_text("#criterion") == "harmlessness"  # the same task, its second step
    page.goto(server["url"] + "/")
    assert page.inner_text("h1") == "Projects"


# --- changing the last ranking -------------------------------------------------------------


def test_a_labeler_changes_their_last_ranking_and_gets_back_to_the_task(page, server):
    from alignloop.server.models import RankingRevision

    project = "change-last"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=2, k=3)
    open_task(page, server, who, project)
    assert page.is_hidden("#edit-last")  # nothing ranked yet
    first_prompt = page.inner_text("#prompt")
    texts = page.locator("article.completion .text").all_inner_texts()
    for digit in "123":
        page.keyboard.press(digit)
        page.keyboard.press("Tab")
    page.fill("#rationale", "A first")
    page.click("#submit")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent !== p", arg=first_prompt
    )
    second_prompt = page.inner_text("#prompt")
    page.keyboard.press("2")  # half-way through the second task

    # "Change my last ranking": the first task again, as it was stored.
    page.click("#edit-last")
    page.wait_for_selector("#edit-banner:not([hidden])")
    assert page.inner_text("#prompt") == first_prompt
    assert page.locator("article.completion .text").all_inner_texts() == texts
    assert badges(page) == ["rank 1", "rank 2", "rank 3"]
    assert page.input_value("#rationale") == "A first"
    assert "changing your last submitted ranking (helpfulness)" in page.inner_text("#edit-banner")
    assert page.is_hidden("#skip")
    page.keyboard.press("3")  # A is now worst ...
    page.keyboard.press("ArrowRight")
    page.keyboard.press("ArrowRight")
    page.keyboard.press("1")  # ... and C best
    page.fill("#rationale", "C after all")
    page.click("#submit")
    page.wait_for_selector("#message:has-text('Your change is saved')")

    # Back on the second task, with its half-done ranking.
    assert page.inner_text("#prompt") == second_prompt
    assert page.is_hidden("#edit-banner") and page.is_visible("#skip")
    assert badges(page) == ["rank 2", "not ranked", "not ranked"]
    (stored,) = service.export_project(server["db"], project, "rankings")
    text_of = {c.id: c.completion for c in _project_completions(server["db"], project)}
    assert [text_of[g[0]] for g in stored.ranking] == [texts[2], texts[1], texts[0]]
    assert stored.rationale == "C after all"
    with server["db"].read() as session:  # the first version is kept
        (old,) = session.scalars(select(RankingRevision)).all()
        assert old.rationale == "A first" and old.version == 1

    # Cancel leaves the stored ranking alone.
    page.keyboard.press("e")
    page.wait_for_selector("#edit-banner:not([hidden])")
    assert badges(page) == ["rank 3", "rank 2", "rank 1"]
    page.click("#edit-cancel")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent === p", arg=second_prompt
    )
    assert page.is_hidden("#edit-banner")
    assert badges(page) == ["rank 2", "not ranked", "not ranked"]


def _project_completions(db, name: str):
    with db.read() as session:
        project = service.get_project(session, name)
        return service.project_records(session, project).completions


def test_a_ranking_submitted_after_the_session_ended_waits_for_the_sign_in(page, server):
    project = "session-ends"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=1, k=2)
    open_task(page, server, who, project)
    aid = _pending_task(server, who, project)["assignment_id"]
    page.keyboard.press("2")
    page.keyboard.press("Tab")
    page.keyboard.press("1")
    page.fill("#rationale", "kept")
    page.context.clear_cookies()  # signed out meanwhile (another tab, an admin, 12 hours)
    page.expected_failures = {f"401 {server['url']}/api/v1/assignments/{aid}/ranking"}
    page.click("#submit")
    page.wait_for_url("**/login?next=*")
    page.fill("#token", server["tokens"][who])
    page.click("button[type=submit]")
    page.wait_for_url(f"**/projects/{project}/label")
    page.wait_for_selector("#task:not([hidden])")
    assert badges(page) == ["rank 2", "rank 1"] and page.input_value("#rationale") == "kept"
    page.click("#submit")
    page.wait_for_selector("#done:not([hidden])")
    (stored,) = service.export_project(server["db"], project, "rankings")
    assert stored.rationale == "kept"


def test_a_screen_reader_hears_each_responses_rank(page, server):
    project = "aria"
    who = _fresh_project(server, project, criteria=["helpfulness"], n_prompts=1, k=2)
    open_task(page, server, who, project)

    def labels() -> list[str]:
        return [c.get_attribute("aria-label") for c in page.locator("article.completion").all()]

    assert labels() == ["Response A, not ranked", "Response B, not ranked"]
    page.keyboard.press("2")
    assert labels() == ["Response A, rank 2", "Response B, not ranked"]
    assert page.get_attribute("#message", "role") == "status"  # messages are announced


def test_a_conversation_shows_as_labelled_turns_with_markup_as_text(page, server, shots):
    turns = [
        ("system", "You answer **briefly**."),
        ("user", f"Summarize this: {XSS}"),
        ("assistant", "Which part?"),
        ("user", "The first sentence."),
    ]
    conversation = [{"role": role, "content": content} for role, content in turns]
    project = "chat"
    who = _fresh_project(
        server,
        project,
        criteria=["helpfulness"],
        n_prompts=1,
        k=2,
        prompt=lambda n, i: conversation,
    )
    open_task(page, server, who, project)
    shown = page.locator("#prompt .turn")
    assert shown.count() == 4
    assert page.locator("#prompt .turn-role").all_text_contents() == [
        "System",
        "User",
        "Assistant",
        "User",
    ]
    assert [shown.nth(i).get_attribute("class") for i in range(4)] == [
        f"turn turn-{role}" for role, _ in turns
    ]
    # Each turn's content as the page's safe Markdown: emphasis as elements, markup as text.
    assert shown.nth(0).locator("strong").inner_text() == "briefly"
    said = shown.nth(1).locator(".turn-content").inner_text()  # (__pwned__ reads as bold)
    assert said.startswith("Summarize this: <script>window.") and '<img src=x onerror="' in said
    assert page.locator("#prompt script, #prompt img").count() == 0
    assert page.evaluate("window.__pwned") is None
    page.screenshot(path=str(shots / "conversation.png"), full_page=True)

    page.keyboard.press("1")
    card(page, "B").focus()
    page.keyboard.press("2")
    page.click("#submit")
    page.wait_for_selector("#done:not([hidden])")
    (pair,) = service.export_project(server["db"], project, "pairs")
    assert pair.prompt == Prompt(id="x", prompt=conversation).prompt
    assert [m.role for m in pair.chosen] == ["assistant"]


# --- a personal project ("my own preferences", issue 16) ------------------------------


def _personal_project(db, name: str, n: int, prompt: str, completion: str) -> None:
    """A personal project of n prompts p0..p{n-1} (`prompt.format(i=i)`) with three
    completions each (`completion.format(i=i, j=j)`) and the default guidelines, which
    need no acknowledging."""
    service.create_project(
        db,
        name=name,
        criteria=["preference"],
        guidelines="",
        prompts=[Prompt(id=f"p{i}", prompt=prompt.format(i=i)) for i in range(n)],
        completions=[
            Completion(id=f"p{i}-{j}", prompt_id=f"p{i}", completion=completion.format(i=i, j=j))
            for i in range(n)
            for j in range(3)
        ],
        personal=True,
    )


def test_a_personal_project_shows_its_banner_and_gives_each_labeler_every_prompt(
    make_page, server, shots
):
    """Two labelers, one at a desk ranking by keyboard and one on a phone tapping rank
    buttons, each rank every prompt of a personal project for themself, in opposite
    orders, under its banner, the progress counting their own rankings; the admin
    page counts each one's comparisons toward a fit of their weights."""
    db, project, n = server["db"], "my-taste", 3
    _personal_project(db, project, n, "Write a title for story {i}.", "Title {j} of story {i}")
    desk = make_page(viewport={"width": 1280, "height": 900})
    phone = make_page(viewport={"width": 390, "height": 844}, has_touch=True, is_mobile=True)
    shown: dict[str, list[list[str]]] = {}  # labeler -> each task's texts, A first
    prompts: dict[str, list[str]] = {}
    for page, who in ((desk, "pia"), (phone, "pat")):
        server["tokens"][who] = service.add_labeler(db, who)
        open_task(page, server, who, project)  # straight to the task: nothing to read first
        banner = page.locator("#personal-banner")
        assert banner.inner_text().startswith("Your own preferences: rank by what you prefer")
        assert in_view(page, "#personal-banner")
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth")
        shown[who], prompts[who] = [], []
        for i in range(n):
            assert page.inner_text("#progress") == (
                f"You have ranked {i} of {n} prompts by your own preferences"
            )
            prompt = page.inner_text("#prompt")
            prompts[who].append(prompt)
            cards = page.locator("article.completion")
            shown[who].append([cards.nth(c).locator(".text").inner_text() for c in range(3)])
            if page is desk:  # A best, then B, then C
                rank_all(page, "keyboard")
                page.keyboard.press("Control+Enter")
            else:  # C best, then B, then A
                for c in range(3):
                    cards.nth(c).locator(f'.rank-button[data-rank="{3 - c}"]').tap()
                if i == 0:
                    page.evaluate("scrollTo(0, 0)")
                    page.screenshot(path=str(shots / "personal-phone.png"))
                page.locator("#submit").tap()
            page.wait_for_function(
                "(p) => !document.querySelector('#task').hidden"
                " && document.querySelector('#prompt').textContent.trim() !== p"
                " || !document.querySelector('#done').hidden",
                arg=prompt,
            )
        page.wait_for_selector("#done:not([hidden])")  # every prompt, and then no more
    everything = [f"Write a title for story {i}." for i in range(n)]
    assert sorted(prompts["pia"]) == sorted(prompts["pat"]) == everything

    # What the server stored: each one's own rankings, each in their own order.
    with db.read() as session:
        records = service.project_records(session, service.get_project(session, project))
    text_of = {c.id: c.completion for c in records.completions}
    for who, order in (("pia", 1), ("pat", -1)):
        mine = service.export_project(db, project, "rankings", labeler=who)
        assert [[text_of[c] for (c,) in r.ranking] for r in mine] == [
            texts[::order] for texts in shown[who]
        ]

    admin = make_page()  # a browser of its own
    sign_in(admin, server, "boss")
    admin.goto(server["url"] + f"/admin/projects/{project}")
    assert "agreement between labelers is not meaningful" in admin.inner_text("#no-agreement")
    row = admin.locator("#personal-labelers tr[data-labeler=pat] .fit")
    assert row.inner_text() == (
        "3 rankings by pat; 11 more comparisons to fit their weights (the fit needs 20)"
    )
    admin.screenshot(path=str(shots / "personal-admin.png"), full_page=True)


def test_a_personal_project_skip_change_last_reload_and_the_last_task(page, server):
    """One labeler of a personal project: a reload keeps the half-done ranking and the
    banner; a skipped prompt does not come back and is not counted as ranked; "change
    my last ranking" reopens the last ranked prompt (not the skipped one) as stored and
    returns to the task under way; after the last prompt nothing is left. The page's
    prompt, banner, progress and badges are checked after every action."""
    db, project, n = server["db"], "my-own-4", 4
    _personal_project(db, project, n, "Name a colour, {i}.", "Colour {j} for {i}")
    server["tokens"]["pip"] = service.add_labeler(db, "pip")
    open_task(page, server, "pip", project)

    def state(ranked: int, prompt: int) -> None:
        assert page.inner_text("#prompt") == f"Name a colour, {prompt}."
        assert page.is_visible("#personal-banner")
        assert page.inner_text("#progress") == (
            f"You have ranked {ranked} of {n} prompts by your own preferences"
        )

    def submit(prompt: int) -> None:
        page.click("#submit")
        page.wait_for_function(
            "(p) => document.querySelector('#prompt').textContent.trim() !== p"
            " || !document.querySelector('#done').hidden",
            arg=f"Name a colour, {prompt}.",
        )

    state(0, 0)
    texts0 = page.locator("article.completion .text").all_inner_texts()
    rank_all(page, "mouse")  # A best, then B, then C
    submit(0)
    state(1, 1)

    # Half-way through prompt 1, a reload: the same prompt, the draft, the banner.
    card(page, "B").locator('.rank-button[data-rank="1"]').click()
    page.reload()
    page.wait_for_selector("#task:not([hidden])")
    state(1, 1)
    assert badges(page) == ["not ranked", "rank 1", "not ranked"]

    # Skipped by keyboard: prompt 2 comes, and the skipped one is not counted as ranked.
    page.keyboard.press("s")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent.trim() !== p",
        arg="Name a colour, 1.",
    )
    state(1, 2)
    assert badges(page) == ["not ranked"] * 3  # nothing of prompt 1's draft stays behind
    card(page, "C").locator('.rank-button[data-rank="1"]').click()

    # Change my last ranking: prompt 0 as stored (prompt 1 was skipped, never ranked).
    page.keyboard.press("e")
    page.wait_for_selector("#edit-banner:not([hidden])")
    assert page.inner_text("#prompt") == "Name a colour, 0."
    assert page.locator("article.completion .text").all_inner_texts() == texts0
    assert badges(page) == ["rank 1", "rank 2", "rank 3"]
    for letter, rank in (("A", 3), ("C", 1)):  # reversed (B stays second)
        card(page, letter).locator(f'.rank-button[data-rank="{rank}"]').click()
    assert badges(page) == ["rank 3", "rank 2", "rank 1"]
    page.click("#submit")
    page.wait_for_selector("#message:has-text('Your change is saved')")
    state(1, 2)  # back on prompt 2 with its half-done ranking; still one ranked
    assert page.is_hidden("#edit-banner")
    assert badges(page) == ["not ranked", "not ranked", "rank 1"]

    rank_all(page, "keyboard")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "(p) => document.querySelector('#prompt').textContent.trim() !== p",
        arg="Name a colour, 2.",
    )
    state(2, 3)  # the last prompt
    rank_all(page, "mouse")
    submit(3)
    page.wait_for_selector("#done:not([hidden])")
    assert page.locator("article.completion:visible").count() == 0
    page.reload()  # and a reload does not bring the skipped prompt back
    page.wait_for_selector("#done:not([hidden])")
    assert _pending_task(server, "pip", project) is None

    text_of = {c.id: c.completion for c in _project_completions(db, project)}
    mine = service.export_project(db, project, "rankings", labeler="pip")
    assert [r.prompt_id for r in mine] == ["p0", "p2", "p3"]
    assert [text_of[c] for (c,) in mine[0].ranking] == texts0[::-1]  # the change stands
