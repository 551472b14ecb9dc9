"""alignloop personal fit: Bradley-Terry weights recovered from synthetic feature
differences, the prior's pull, a user's pairs picked from a file of several labelers,
and the command end to end on a tiny personal reward model, its weights file read back
by alignloop score --user-weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.io import read_records, write_records
from alignloop.personal import PersonalFitConfig
from alignloop.personal.fit import bradley_terry_fit, pairwise_accuracy, user_pairs
from alignloop.schema import Comparison, Completion

pytestmark = pytest.mark.usefixtures("one_thread")


def synthetic(w_true: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """n pairs of normal features labeled by a Bradley-Terry user of weights w_true:
    (n, D) differences chosen - rejected."""
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(n, len(w_true), generator=g), torch.randn(n, len(w_true), generator=g)
    a_wins = torch.rand(n, generator=g) < torch.sigmoid((a - b) @ w_true)  # (n,)
    return torch.where(a_wins[:, None], a - b, b - a)


def test_a_known_weight_vector_is_recovered():
    w_true = torch.tensor([2.0, -1.0, 0.5, 0.0])
    d = synthetic(w_true, 4000, seed=0)
    w = bradley_terry_fit(d, torch.zeros(4), prior=1e-3)
    assert (w - w_true).abs().max() < 0.15  # ~3 standard errors at n = 4000
    # the optimum: the gradient of the loss is zero there
    p = torch.sigmoid(d.double() @ w.double())
    grad = -d.double().T @ (1 - p) + 1e-3 * w.double()
    assert grad.abs().max() < 1e-3
    assert pairwise_accuracy(d, w) > pairwise_accuracy(d, torch.tensor([0.0, 0.0, 0.0, 1.0]))


def test_the_prior_pulls_few_pairs_toward_the_default_weights():
    w_true, w0 = torch.tensor([2.0, -1.0, 0.5]), torch.tensor([0.3, 0.3, 0.3])
    d = synthetic(w_true, 20, seed=1)
    strong = bradley_terry_fit(d, w0, prior=1e4)
    assert (strong - w0).abs().max() < 0.01  # the prior wins: almost w0
    weak = bradley_terry_fit(d, w0, prior=0.1)
    assert torch.dot(weak, w_true) / weak.norm() > torch.dot(w0, w_true) / w0.norm()
    # pairs one vector orders perfectly (separable) still give a finite answer
    separable = torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0]])
    w = bradley_terry_fit(separable, torch.zeros(3), prior=0.01)
    assert torch.isfinite(w).all() and pairwise_accuracy(separable, w) == 1.0


def test_user_pairs_keeps_one_labelers_and_names_the_file_when_none():
    pairs = [Comparison(prompt="p", chosen=f"a{i}", rejected="b", labeler=who)
             for i, who in enumerate(["ann", "bob", "ann", None])]  # fmt: skip
    assert [p.chosen for p in user_pairs(pairs, "ann", "pairs.jsonl")] == ["a0", "a2"]
    with pytest.raises(ConfigError, match=r"^--pairs pairs.jsonl: no pairs of --user carl "
                       r"\(its labelers: ann, bob\)"):  # fmt: skip
        user_pairs(pairs, "carl", "pairs.jsonl")
    with pytest.raises(ConfigError, match="must be positive"):
        PersonalFitConfig(user="a", pairs=Path("p"), model="m", out=Path("w.json"), prior=0)


# --- the command, on a tiny personal reward model ---------------------------------------

D = 3
CARL = [1.5, -1.0, 0.5]  # the new user's true weights over the model's three features


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, Path]:
    """A tiny personal reward model ("rm"), stand-in completions of 30 world prompts,
    and pairs of them by two labelers: "carl" orders each pair by CARL . f
    (noiseless), "ann" the other way round (so that a fit on everybody's pairs would
    not find CARL).

    The model: a 1-layer Llama with D = 3 outputs ("feature_0".."feature_2"), two
    users and their mean as the default weights, each head normalized to mean 0 and
    std 1 on the completions (as train-rm does; a random head's raw features hardly
    differ between texts)."""
    from transformers import LlamaForSequenceClassification

    from alignloop.loop.demo import stand_in_completions
    from alignloop.models import (
        NORMALIZATION_KEY,
        PERSONAL_KEY,
        RewardModel,
        build_tiny_causal_lm,
        save_pretrained,
    )  # fmt: skip
    from alignloop.world import build_tokenizer, make_prompts

    root = tmp_path_factory.mktemp("personal")
    tokenizer = build_tokenizer()
    config = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=4).config
    config.num_labels = D
    config.id2label = {i: f"feature_{i}" for i in range(D)}
    config.label2id = {v: k for k, v in config.id2label.items()}
    users = {"ann": [1.0, 0.0, 0.0], "bob": [0.0, 1.0, 0.0]}
    setattr(config, PERSONAL_KEY, {"users": users, "default": [0.5, 0.5, 0.0]})
    setattr(config, NORMALIZATION_KEY, {"gain": [1.0] * D, "bias": [0.0] * D})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        save_pretrained(LlamaForSequenceClassification(config), tokenizer, root / "raw")
    prompts = make_prompts(30, seed=0)
    completions = stand_in_completions(prompts, k=4, seed=0)
    by_id = {p.id: p for p in prompts}
    texts = ([by_id[c.prompt_id].prompt for c in completions], [c.completion for c in completions])
    model = RewardModel.from_pretrained(root / "raw", new_head=False)
    raw = model.head_scores(*texts)  # (N, D)
    model.set_normalization(1 / raw.std(0), -raw.mean(0) / raw.std(0))
    rm = model.save_pretrained(root / "rm")
    f = RewardModel.from_pretrained(rm, new_head=False).head_scores(*texts)  # (N, D)
    assert torch.allclose(f.std(0), torch.ones(D), atol=1e-3)
    utility = (f @ torch.tensor(CARL)).tolist()
    pairs = []
    for i in range(0, len(completions) - 1, 2):
        a, b = completions[i], completions[i + 1]
        if a.prompt_id != b.prompt_id or a.completion == b.completion:
            continue
        better, worse = (a, b) if utility[i] > utility[i + 1] else (b, a)
        prompt = by_id[a.prompt_id].prompt
        pairs.append(Comparison(prompt=prompt, chosen=better.completion,
                                rejected=worse.completion, labeler="carl"))  # fmt: skip
        pairs.append(Comparison(prompt=prompt, chosen=worse.completion,
                                rejected=better.completion, labeler="ann"))  # fmt: skip
    paths = {"rm": rm, "pairs": root / "pairs.jsonl", "prompts": root / "prompts.jsonl",
             "completions": root / "completions.jsonl"}  # fmt: skip
    write_records(paths["pairs"], pairs)
    write_records(paths["prompts"], prompts)
    write_records(paths["completions"], completions)
    return paths


def _fit(world, out: Path, *more: str) -> dict:
    args = ["personal", "fit", "--user", "carl", "--pairs", str(world["pairs"]),
            "--model", str(world["rm"]), "--out", str(out), *more]  # fmt: skip
    assert main(args) == 0
    return json.loads(out.read_text())


def test_personal_fit_command_writes_the_users_weights(world, tmp_path, capsys):
    saved = _fit(world, tmp_path / "carl.json", "--prior", "0.01")
    assert json.loads(capsys.readouterr().out) == saved
    n_carl = sum(p.labeler == "carl" for p in read_records(world["pairs"], "comparison"))
    assert saved["user"] == "carl" and saved["n_pairs"] == n_carl >= 25
    assert saved["model"] == str(world["rm"].resolve())
    assert list(saved["weights"]) == ["feature_0", "feature_1", "feature_2"]
    w = torch.tensor(list(saved["weights"].values()))
    cosine = torch.dot(w, torch.tensor(CARL)) / (w.norm() * torch.tensor(CARL).norm())
    assert cosine > 0.9  # the direction of CARL (noiseless pairs fix no scale)
    assert saved["train_accuracy"] >= 0.95 and saved["default_accuracy"] < 0.8

    few = _fit(world, tmp_path / "few.json", "--max-pairs", "20")
    assert few["n_pairs"] == 20 and few["prior"] == 1.0


def test_personal_fit_refuses_a_one_output_model_and_a_user_without_pairs(
    world, tiny_rm, tmp_path, capsys
):
    args = ["personal", "fit", "--pairs", str(world["pairs"]), "--out", str(tmp_path / "w.json")]
    assert main([*args, "--user", "dora", "--model", str(world["rm"])]) == 2
    err = capsys.readouterr().err
    assert f"--pairs {world['pairs']}: no pairs of --user dora (its labelers: ann, carl)" in err
    assert main([*args, "--user", "carl", "--model", str(tiny_rm)]) == 2
    assert "a reward model of one output has no features to weigh" in capsys.readouterr().err
    assert not (tmp_path / "w.json").exists()


def test_score_with_the_fitted_weights_file(world, tmp_path):
    """alignloop score --user-weights W.json: each completion's reward is the fitted
    weights' combination of its normalized features."""
    from alignloop.models import RewardModel

    weights = _fit(world, tmp_path / "carl.json")["weights"]
    out = tmp_path / "scores.jsonl"
    assert main(["score", "--model", str(world["rm"]), "--data", str(world["completions"]),
                 "--prompts", str(world["prompts"]), "--out", str(out),
                 "--user-weights", str(tmp_path / "carl.json")]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    completions: list[Completion] = read_records(world["completions"], "completion")
    prompts = {p.id: p for p in read_records(world["prompts"], "prompt")}
    model = RewardModel.from_pretrained(world["rm"], new_head=False)
    f = model.head_scores([prompts[c.prompt_id].prompt for c in completions],
                          [c.completion for c in completions])  # fmt: skip
    expected = f @ torch.tensor([weights[h] for h in model.head_names])
    assert torch.allclose(torch.tensor([r["reward"] for r in rows]), expected, atol=1e-5)
