"""Conversational prompts in the labeling server (issue 15), on SQLite and PostgreSQL:
a project of conversations (and texts) made through the admin API, the CLI and the
admin page; a task carries the turns; rankings export as TRL conversational pairs
that train-rm reads; each message's content is held to a text prompt's limits; and
migration 0003 leaves what was stored before as it was."""

from __future__ import annotations

import copy
import json

import pytest
from sqlalchemy import text

from alignloop.chat import prompt_display
from alignloop.cli import main
from alignloop.feedback import rankings_to_pairs
from alignloop.io import read_comparisons, read_records, write_records
from alignloop.schema import Completion, Message, Prompt, Ranking, SchemaError
from alignloop.server import assign, service
from alignloop.server.db import Database, head_revision, open_database, upgrade

CONVERSATION = [
    {"role": "system", "content": "You are a *careful* assistant."},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "And <b>doubled</b>?"},
]


def body() -> dict:
    """An admin API project body: prompt c0 is a conversation, t1 a text."""
    prompts = [
        {"id": "c0", "prompt": copy.deepcopy(CONVERSATION)},
        {"id": "t1", "prompt": "Say hi."},
    ]
    completions = [
        {"id": f"{p['id']}-{j}", "prompt_id": p["id"], "completion": f"answer {j}"}
        for p in prompts
        for j in range(3)
    ]
    return {
        "name": "chat",
        "criteria": ["helpfulness"],
        "guidelines": "# Rank\n",
        "prompts": prompts,
        "completions": completions,
        "overlap": 1,
    }


def test_a_conversation_project_through_the_api_ranks_and_exports_trl_pairs(
    db, as_labeler, tmp_path
):
    boss = as_labeler("boss", admin=True)
    r = boss.post("/api/v1/admin/projects", json=body())
    assert r.status_code == 201, r.text
    ann = as_labeler("ann", acknowledge="chat")
    tasks = {}
    for _ in range(2):
        task = ann.next("chat").json()
        tasks["c0" if task["messages"] else "t1"] = task
        order = sorted(task["completions"], key=lambda c: c["text"])  # answer 0 best
        assert ann.rank(task["assignment_id"], [[c["id"]] for c in order]).status_code == 201
    assert tasks["c0"]["messages"] == CONVERSATION
    assert tasks["c0"]["prompt"] == prompt_display(CONVERSATION)
    assert tasks["t1"]["messages"] is None and tasks["t1"]["prompt"] == "Say hi."
    last = ann.get("/api/v1/rankings/last", params={"project": "chat"}).json()
    assert last["assignment_id"] == task["assignment_id"] and last["messages"] == task["messages"]

    # The stored records are the ones given: the conversation comes back as messages.
    with db.read() as session:
        records = service.project_records(session, service.get_project(session, "chat"))
    assert records.prompts == [
        Prompt(id="c0", prompt=CONVERSATION),
        Prompt(id="t1", prompt="Say hi."),
    ]
    assert records.prompts[0].prompt[1] == Message(role="user", content="What is 2 + 2?")

    r = boss.get("/api/v1/admin/projects/chat/export", params={"what": "pairs"})
    rows = [json.loads(line) for line in r.text.splitlines()]
    conv = [row for row in rows if row["prompt_id"] == "c0"]
    assert len(rows) == 6 and len(conv) == 3
    # TRL's conversational preference format: the prompt's messages, and the chosen and
    # rejected answers as lists of one assistant message.
    assert conv[0]["prompt"] == CONVERSATION
    assert conv[0]["chosen"] == [{"role": "assistant", "content": "answer 0"}]
    assert conv[0]["rejected"] == [{"role": "assistant", "content": "answer 1"}]
    assert [row["prompt"] for row in rows if row["prompt_id"] == "t1"] == ["Say hi."] * 3
    path = tmp_path / "pairs.jsonl"
    path.write_text(r.text)
    pairs = read_comparisons(path).comparisons  # what train-rm reads (train.reward.load_pairs)
    assert [p.prompt_id for p in pairs] == [row["prompt_id"] for row in rows]
    assert pairs[0].prompt == Prompt(id="c0", prompt=CONVERSATION).prompt
    assert pairs[0].chosen == (Message(role="assistant", content="answer 0"),)
    assert service.export_project(db, "chat", "pairs") == pairs


def test_rankings_to_pairs_of_a_conversation_gives_assistant_turns():
    prompt = Prompt(id="c0", prompt=CONVERSATION)
    completions = [Completion(id=f"c0-{j}", prompt_id="c0", completion=f"a{j}") for j in range(3)]
    ranking = Ranking(
        prompt_id="c0", labeler="ann", criterion="h", ranking=[["c0-2"], ["c0-0", "c0-1"]]
    )
    pairs = rankings_to_pairs([ranking], completions, [prompt]).pairs
    assert [(p.chosen_id, p.rejected_id) for p in pairs] == [("c0-2", "c0-0"), ("c0-2", "c0-1")]
    assert all(p.prompt == prompt.prompt for p in pairs)
    assert pairs[0].to_dict()["chosen"] == [{"role": "assistant", "content": "a2"}]
    assert pairs[1].to_dict()["rejected"] == [{"role": "assistant", "content": "a1"}]


def test_every_message_is_held_to_the_limits_of_a_text_prompt(db, as_labeler):
    bad = body()
    bad["prompts"][0]["prompt"] = [*CONVERSATION[:3], {"role": "user", "content": "a\x00b"}]
    r = as_labeler("boss", admin=True).post("/api/v1/admin/projects", json=bad)
    assert r.status_code == 422
    assert "prompts[0]: field 'prompt': message 4's content contains a NUL byte" in r.text
    prompts = [Prompt(id="c0", prompt=[{"role": "system", "content": "\x00"}, CONVERSATION[1]])]
    completions = [Completion(id=f"c0-{j}", prompt_id="c0", completion="x") for j in range(2)]
    with pytest.raises(SchemaError, match="field 'prompt': message 1's content contains a NUL"):
        service.create_project(
            db,
            name="p",
            criteria=["h"],
            guidelines="g",
            prompts=prompts,
            completions=completions,
            overlap=1,
        )
    assert service.list_projects(db) == []


def cli_project(tmp_path) -> str:
    """`alignloop project create` of body()'s files into a new SQLite file, every task
    ranked "answer 2" first, then "answer 0" and "answer 1" tied; returns the URL."""
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    b = body()
    files = {k: tmp_path / f"{k}.jsonl" for k in ("prompts", "completions")}
    for k in files:
        files[k].write_text("".join(json.dumps(x) + "\n" for x in b[k]))
    (tmp_path / "g.md").write_text("# Rank\n")
    assert main(["db", "upgrade", "--db", url]) == 0
    create = ["project", "create", "--db", url, "--name", "chat", "--criteria", "helpfulness"]
    create += ["--guidelines", str(tmp_path / "g.md"), "--overlap", "1"]
    create += ["--prompts", str(files["prompts"]), "--completions", str(files["completions"])]
    assert main(create) == 0
    db = open_database(url)
    service.add_labeler(db, "ann")  # labeler 1
    assign.acknowledge(db, 1, "chat", assign.guidelines_for(db, 1, "chat")["version"])
    while (task := assign.next_task(db, 1, "chat")) is not None:
        ids = {c["text"]: c["id"] for c in task["completions"]}
        ranking = [[ids["answer 2"]], [ids["answer 0"], ids["answer 1"]]]
        assign.submit_ranking(db, 1, task["assignment_id"], assign.Submission(None, ranking))
    db.dispose()
    return url


def test_cli_create_and_export_of_a_conversation_project(tmp_path, capsys):
    url = cli_project(tmp_path)
    out = tmp_path / "pairs.jsonl"
    export = ["project", "export", "--db", url, "--name", "chat", "--what", "pairs"]
    assert main([*export, "--out", str(out)]) == 0
    pairs = read_comparisons(out).comparisons
    conv = [p for p in pairs if p.prompt_id == "c0"]
    assert len(pairs) == 4 and len(conv) == 2
    assert conv[0].prompt == Prompt(id="c0", prompt=CONVERSATION).prompt
    assert conv[0].chosen == (Message(role="assistant", content="answer 2"),)
    rankings = tmp_path / "rankings.jsonl"
    export[-1] = "rankings"
    assert main([*export, "--out", str(rankings)]) == 0
    assert len(read_records(rankings, "ranking")) == 2
    write_records(tmp_path / "again.jsonl", pairs)
    assert read_comparisons(tmp_path / "again.jsonl").comparisons == pairs


@pytest.mark.slow
def test_train_rm_trains_on_the_exported_pairs_as_they_are(chat_models, tmp_path):
    url = cli_project(tmp_path)
    pairs = tmp_path / "pairs.jsonl"
    export = ["project", "export", "--db", url, "--name", "chat", "--what", "pairs"]
    assert main([*export, "--out", str(pairs)]) == 0
    out = tmp_path / "rm"
    train = ["train-rm", "--model", str(chat_models["rm"]), "--data", str(pairs), "--out", str(out)]
    train += ["--max-steps", "2", "--batch-size", "1", "--eval-fraction", "0.5"]
    train += ["--norm-samples", "4", "--mixed-precision", "no", "--save-every", "0"]
    assert main(train) == 0
    assert json.loads((out / "eval.json").read_text())["n"] == 2  # one prompt's 2 pairs


def test_migration_0003_keeps_text_prompts_as_they_were(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'old.db'}")
    upgrade(db, "0002")
    with db.engine.begin() as conn:
        conn.execute(
            text("INSERT INTO projects VALUES (1, 'p', '[\"c\"]', 1, 0, 60, '2026-01-01')")
        )
        conn.execute(text("INSERT INTO prompts VALUES (1, 1, 'q', 'a text', NULL, '{}', 0)"))
    assert upgrade(db) == ("0002", head_revision())  # through 0003, and on to the newest
    with db.read() as session:
        records = service.project_records(session, service.get_project(session, "p"))
    assert records.prompts == [Prompt(id="q", prompt="a text")]
    db.dispose()


def test_the_admin_page_creates_a_conversation_project_and_reviews_its_turns(db, client):
    import re

    def csrf(html: str) -> str:
        return re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)

    def sign_in(token: str) -> None:
        client.cookies.clear()
        data = {"token": token, "csrf_token": csrf(client.get("/login").text), "next": "/"}
        assert client.post("/login", data=data, follow_redirects=False).status_code == 303

    boss, ann = service.add_labeler(db, "boss", admin=True), service.add_labeler(db, "ann")
    b = body()
    b["prompts"][0]["prompt"][1]["content"] = "What is <script>alert(1)</script> 2 + 2?"
    files = {
        k: (f"{k}.jsonl", "".join(json.dumps(x) + "\n" for x in b[k]))
        for k in ("prompts", "completions")
    }
    fields = {"name": "chat", "criteria": "helpfulness", "overlap": "1", "assignment_ttl_min": "30"}
    sign_in(boss)
    form = client.get("/admin/projects/new").text
    r = client.post(
        "/admin/projects/new",
        data={**fields, "gold_rate": "", "guidelines": "# Rank\n", "csrf_token": csrf(form)},
        files=files,
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    with db.read() as session:
        records = service.project_records(session, service.get_project(session, "chat"))
    assert records.prompts[0] == Prompt(id="c0", prompt=b["prompts"][0]["prompt"])

    sign_in(ann)
    from alignloop.server import assign

    assign.acknowledge(db, 2, "chat", assign.guidelines_for(db, 2, "chat")["version"])
    while (task := assign.next_task(db, 2, "chat")) is not None:
        ranking = [[c["id"]] for c in task["completions"]]
        assign.submit_ranking(db, 2, task["assignment_id"], assign.Submission(None, ranking))
    sign_in(boss)
    page = client.get("/admin/projects/chat/review", params={"prompt_id": "c0"}).text
    roles = re.findall(r'<section class="turn turn-(\w+)"><h3 class="turn-role">(\w+)</h3>', page)
    assert roles == [
        ("system", "System"),
        ("user", "User"),
        ("assistant", "Assistant"),
        ("user", "User"),
    ]
    assert "<em>careful</em>" in page  # each turn's Markdown
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
