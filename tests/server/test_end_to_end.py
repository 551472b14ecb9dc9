"""End to end: two labelers rank through the API, the admin exports pairs with
`alignloop project export --what pairs`, and `alignloop train-rm` trains a tiny reward
model on them that then prefers the completions the labelers preferred.

The task is the built-in world's: each prompt has two clean stand-in summaries and
one with a rude word inserted; the labelers tie the clean two and put the rude one
last (a preference a 1-layer model learns in seconds)."""

from __future__ import annotations

import json
import random

import pytest

from alignloop.cli import main
from alignloop.io import read_records, write_records
from alignloop.schema import Comparison, Completion

pytestmark = pytest.mark.slow


def world_task(n_prompts: int, seed: int, prefix: str):
    from alignloop.loop import stand_in_completions
    from alignloop.world import RUDE_WORDS, has_rude_word, make_prompts

    prompts = make_prompts(n_prompts, seed, id_prefix=prefix)
    rng = random.Random(seed)
    completions = []
    for p in prompts:
        clean = [
            c for c in stand_in_completions([p], k=6, seed=seed) if not has_rude_word(c.completion)
        ]
        texts = list(dict.fromkeys(c.completion for c in clean))[:2]
        words = texts[0].split()
        words.insert(rng.randrange(len(words) + 1), rng.choice(sorted(RUDE_WORDS)))
        for j, text in enumerate([*texts, " ".join(words)]):
            completions.append(Completion(id=f"{p.id}-{j}", prompt_id=p.id, completion=text))
    return prompts, completions


def test_rankings_from_the_api_train_a_reward_model(tmp_path, tiny_rm, capsys):
    """`tiny_rm`: the 1-layer Llama reward model of tests/conftest.py."""
    import torch
    from fastapi.testclient import TestClient

    from alignloop.server import service
    from alignloop.server.app import create_app
    from alignloop.world import has_rude_word

    torch.set_num_threads(1)
    url = f"sqlite:///{tmp_path / 'labels.db'}"
    prompts, completions = world_task(40, seed=0, prefix="train")
    write_records(tmp_path / "prompts.jsonl", prompts)
    write_records(tmp_path / "completions.jsonl", completions)
    (tmp_path / "guidelines.md").write_text("Rude summaries last; tie the others.\n")
    assert (
        main(
            [
                "project",
                "create",
                "--db",
                url,
                "--name",
                "rude",
                "--criteria",
                "politeness",
                "--guidelines",
                str(tmp_path / "guidelines.md"),
                "--prompts",
                str(tmp_path / "prompts.jsonl"),
                "--completions",
                str(tmp_path / "completions.jsonl"),
                "--overlap",
                "2",
            ]
        )
        == 0
    )

    app = create_app(url)
    with TestClient(app) as client:
        for name in ("ann", "bob"):
            headers = {"Authorization": f"Bearer {service.add_labeler(app.state.db, name)}"}
            version = client.get("/api/v1/projects/rude/guidelines", headers=headers).json()
            client.post(
                f"/api/v1/projects/rude/guidelines/{version['version']}/acknowledge",
                headers=headers,
            )
            while (r := client.get("/api/v1/tasks/next", headers=headers)).status_code == 200:
                task = r.json()
                clean = [c["id"] for c in task["completions"] if not has_rude_word(c["text"])]
                rude = [c["id"] for c in task["completions"] if has_rude_word(c["text"])]
                r = client.post(
                    f"/api/v1/assignments/{task['assignment_id']}/ranking",
                    json={"ranking": [clean, rude]},
                    headers=headers,
                )
                assert r.status_code == 201, r.text

    pairs_file = tmp_path / "pairs.jsonl"
    assert (
        main(
            [
                "project",
                "export",
                "--db",
                url,
                "--name",
                "rude",
                "--what",
                "pairs",
                "--out",
                str(pairs_file),
            ]
        )
        == 0
    )
    pairs = read_records(pairs_file, Comparison)
    assert len(pairs) == 40 * 2 * 2  # 40 prompts x 2 labelers x 2 strict pairs (a tie)
    assert all(has_rude_word(p.rejected) and not has_rude_word(p.chosen) for p in pairs)

    held_out_prompts, held_out = world_task(20, seed=1, prefix="eval")
    by_prompt = {p.id: p for p in held_out_prompts}
    eval_pairs = [
        Comparison(
            prompt=by_prompt[c.prompt_id].prompt,
            chosen=c.completion,
            rejected=held_out[i + 2].completion,
            prompt_id=c.prompt_id,
        )
        for i, c in enumerate(held_out)
        if c.id.endswith("-0")
    ]
    write_records(tmp_path / "eval.jsonl", eval_pairs)
    out = tmp_path / "rm"
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(tiny_rm), "--data", str(tmp_path / "eval.jsonl")]) == 0
    before = json.loads(capsys.readouterr().out)
    assert (
        main(
            [
                "train-rm",
                "--model",
                str(tiny_rm),
                "--data",
                str(pairs_file),
                "--eval-data",
                str(tmp_path / "eval.jsonl"),
                "--out",
                str(out),
                "--lr",
                "3e-3",
                "--epochs",
                "3",
                "--batch-size",
                "8",
                "--warmup-ratio",
                "0",
                "--save-every",
                "0",
                "--eval-every",
                "0",
            ]
        )
        == 0
    )
    final = json.loads((out / "eval.json").read_text())
    assert final["n"] == 20
    assert final["accuracy"] >= 0.9 and final["accuracy"] > before["accuracy"], (before, final)
    assert final["mean_margin"] > before["mean_margin"]
