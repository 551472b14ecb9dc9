"""The server source end to end: `alignloop serve` in a process of its own (a fresh
SQLite database), `alignloop loop --source server` in another, and API clients
playing the labelers. The loop creates the round's project through the admin API,
waits for its rankings and trains on them; killed while it waits, the same command
finds its project, waits on, and ends as a run that was never killed."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytest.importorskip("fastapi", reason="the labeling server needs: pip install 'alignloop[server]'")

from .conftest import ENV, loop_command  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _call(url: str, token: str, method: str = "GET", body=None):
    request = urllib.request.Request(
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=30) as r:
        return r.status, (json.loads(r.read() or b"null") if r.status != 204 else None)


@pytest.fixture
def server(tmp_path):
    """A labeling server on a free port: its URL and the tokens of an admin and two
    labelers."""
    from alignloop.server import service
    from alignloop.server.db import Database, upgrade

    url = f"sqlite:///{tmp_path / 'labels.db'}"
    db = Database(url)
    upgrade(db)
    tokens = {name: service.add_labeler(db, name, admin=name == "boss")
              for name in ("boss", "ann", "bob")}  # fmt: skip
    db.dispose()
    port = _free_port()
    log = tmp_path / "server.log"
    with open(log, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "alignloop", "serve", "--db", url, "--port", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, env=ENV,
        )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(base + "/login", timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the server did not start:\n{log.read_text()}") from None
                time.sleep(0.2)
        yield {"url": base, "tokens": tokens}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for_project(server, name: str, proc, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the loop ended before creating its project"
        _, projects = _call(server["url"] + "/api/v1/admin/projects", server["tokens"]["boss"])
        if any(p["name"] == name for p in projects):
            return
        time.sleep(0.1)
    raise AssertionError(f"no project {name} after {timeout} s")


def label_everything(server, labeler: str, project: str) -> int:
    """One labeler ranks every task they get: longer texts first, equal lengths tied
    (a rule, so that two runs get the same rankings). Returns how many."""
    base, token = server["url"] + "/api/v1", server["tokens"][labeler]
    _, guidelines = _call(f"{base}/projects/{project}/guidelines", token)
    _call(f"{base}/projects/{project}/guidelines/{guidelines['version']}/acknowledge", token,
          "POST")  # fmt: skip
    done = 0
    while True:
        status, task = _call(f"{base}/tasks/next?project={project}", token)
        if status == 204:
            return done
        groups: dict[int, list[str]] = {}
        for c in task["completions"]:
            groups.setdefault(len(c["text"]), []).append(c["id"])
        ranking = [groups[n] for n in sorted(groups, reverse=True)]
        status, _ = _call(f"{base}/assignments/{task['assignment_id']}/ranking", token, "POST",
                          {"ranking": ranking})  # fmt: skip
        assert status == 201
        done += 1


def test_the_loop_waits_for_people_and_resumes_after_sigkill(server, loop_yaml, tmp_path):
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("Rank the longer summary first.\n")
    env = {**ENV, "ALIGNLOOP_ADMIN_TOKEN": server["tokens"]["boss"]}
    keys = dict(source="server", server=server["url"], guidelines=str(guidelines), rounds=1,
                prompts_per_round=4, overlap=2, poll_s=0.1)  # fmt: skip

    # killed while it waits: ann has ranked, bob has not
    killed = tmp_path / "killed"
    config = loop_yaml(killed, project_prefix="killed", **keys)
    proc = subprocess.Popen(loop_command(config), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_project(server, "killed-round-1", proc)
        assert label_everything(server, "ann", "killed-round-1") == 4
        time.sleep(0.5)  # it polls on
        assert proc.poll() is None  # still waiting for bob
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    state = json.loads((killed / "state.json").read_text())
    assert state["rounds"]["1"]["done"] == ["generate"]
    assert json.loads((killed / "round-1" / "server.json").read_text())["project"] == (
        "killed-round-1"
    )
    resumed = subprocess.Popen(loop_command(config), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)
    assert label_everything(server, "bob", "killed-round-1") == 4
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]

    # the same round never killed, with the same labels
    straight = tmp_path / "straight"
    config = loop_yaml(straight, project_prefix="straight", **keys)
    proc = subprocess.Popen(loop_command(config), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_project(server, "straight-round-1", proc)
    assert label_everything(server, "ann", "straight-round-1") == 4
    assert label_everything(server, "bob", "straight-round-1") == 4
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    _, projects = _call(server["url"] + "/api/v1/admin/projects", server["tokens"]["boss"])
    assert sorted(p["name"] for p in projects) == ["killed-round-1", "straight-round-1"]
    rankings = (killed / "round-1" / "rankings.jsonl").read_text().splitlines()
    assert len(rankings) == 4 * 2
    assert {json.loads(r)["labeler"] for r in rankings} == {"ann", "bob"}
    for name in ("completions.jsonl", "rankings.jsonl", "pairs.jsonl", "rm/model.safetensors",
                 "ppo/model.safetensors", "eval/completions_rlhf.jsonl"):  # fmt: skip
        a = (killed / "round-1" / name).read_bytes()
        assert a == (straight / "round-1" / name).read_bytes(), name
    rounds = [json.loads((d / "metrics.json").read_text())["rounds"] for d in (killed, straight)]
    for r in rounds:
        r[0].pop("seconds")
    assert rounds[0] == rounds[1] and rounds[0][0]["n_rankings"] == 8


def test_no_token_no_run(loop_yaml, tmp_path, capsys, monkeypatch):
    from alignloop.cli import main

    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("Rank.\n")
    config = loop_yaml(tmp_path / "run", source="server", server="http://127.0.0.1:9",
                       guidelines=str(guidelines))  # fmt: skip
    monkeypatch.delenv("ALIGNLOOP_ADMIN_TOKEN", raising=False)
    assert main(["loop", "--config", str(config)]) == 2
    assert "ALIGNLOOP_ADMIN_TOKEN" in capsys.readouterr().err


def test_gold_items_go_to_the_labelers_are_scored_and_stay_out_of_training(
    server, loop_yaml, tmp_path
):
    """`gold: DIR` puts known rankings in the round's project as hidden gold items: the
    labelers get them among their tasks and the server scores them, they do not count
    for overlap (the loop moves on when the round's own prompts are done), and their
    rankings stay out of the round's rankings, pairs and reward model."""
    from alignloop.io import write_records
    from alignloop.schema import Completion, Prompt, Ranking

    gold_dir = tmp_path / "gold"
    gold_dir.mkdir()
    prompts = [Prompt(id=f"gold-{i}", prompt=f"a gold document number {i} .") for i in (0, 1)]
    texts = ["a", "a b c", "a b c d e f"]  # lengths 1, 5, 11: no ties
    completions = [Completion(id=f"gold-{i}-{j}", prompt_id=f"gold-{i}", completion=t)
                   for i in (0, 1) for j, t in enumerate(texts)]  # fmt: skip
    longest_first = [["gold-0-2"], ["gold-0-1"], ["gold-0-0"]]  # the labelers' own rule
    shortest_first = [["gold-1-0"], ["gold-1-1"], ["gold-1-2"]]  # against it
    write_records(gold_dir / "prompts.jsonl", prompts)
    write_records(gold_dir / "completions.jsonl", completions)
    write_records(gold_dir / "rankings.jsonl", [
        Ranking(prompt_id="gold-0", labeler="gold", criterion="overall", ranking=longest_first),
        Ranking(prompt_id="gold-1", labeler="gold", criterion="overall", ranking=shortest_first),
    ])  # fmt: skip
    guidelines = tmp_path / "guidelines.md"
    guidelines.write_text("Rank the longer summary first.\n")
    env = {**ENV, "ALIGNLOOP_ADMIN_TOKEN": server["tokens"]["boss"]}
    out = tmp_path / "with-gold"
    config = loop_yaml(out, source="server", server=server["url"], guidelines=str(guidelines),
                       rounds=1, prompts_per_round=4, overlap=2, poll_s=0.1,
                       project_prefix="gold", gold=str(gold_dir), gold_rate=0.9)  # fmt: skip
    proc = subprocess.Popen(loop_command(config), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait_for_project(server, "gold-round-1", proc)
    # both gold items come to each labeler (at a rate of 0.9, while regular tasks last)
    assert label_everything(server, "ann", "gold-round-1") == 4 + 2
    assert label_everything(server, "bob", "gold-round-1") == 4 + 2
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]

    base, boss = server["url"] + "/api/v1/admin/projects/gold-round-1", server["tokens"]["boss"]
    _, status = _call(base + "/status", boss)
    assert status["progress"]["prompts"] == 4 and status["progress"]["gold_prompts"] == 2
    assert status["progress"]["complete_prompts"] == 4
    for name in ("ann", "bob"):  # right on gold-0's 3 pairs, wrong on gold-1's 3
        assert status["labelers"][name]["gold"] == {"accuracy": 0.5, "pairs": 6, "items": 2}
    rankings = [json.loads(line) for line in
                (out / "round-1" / "rankings.jsonl").read_text().splitlines()]  # fmt: skip
    assert len(rankings) == 4 * 2
    assert not any(r["prompt_id"].startswith("gold-") for r in rankings)
    for name in ("pairs.jsonl", "rm_train.jsonl", "completions.jsonl"):
        assert "gold-" not in (out / "round-1" / name).read_text(), name
    rounds = json.loads((out / "metrics.json").read_text())["rounds"]
    assert rounds[0]["n_rankings"] == 8
