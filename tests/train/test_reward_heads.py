"""Reward models of several heads (issue 16) trained on CPU in seconds: each pair's loss
on its own head (criteria) or with its own labeler's weights (personal), by hand; a
personal model learning two labelers whose tastes are opposite, which one pooled reward
cannot; saving, scoring and evaluating them through the CLI; the errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tests.train.conftest import bt_loss as _bt

from alignloop.cli import main
from alignloop.io import write_records
from alignloop.schema import Comparison
from alignloop.train.reward import (
    Heads,
    PersonalRewardModel,
    batch_loss,
    collate,
    group_pairs,
    step_loss,
    tokenize_groups,
)
from alignloop.train.reward_config import RewardConfig


def _pair(prompt, chosen, rejected, *, labeler=None, criterion=None):
    return Comparison(prompt=prompt, chosen=chosen, rejected=rejected, prompt_id=prompt,
                      labeler=labeler, criterion=criterion)  # fmt: skip


# --- 1. the loss by hand: each pair on its own head -------------------------------------

CRITERIA_PAIRS = [
    _pair("tl;dr :", "a dog", "a cat", criterion="a"),
    _pair("tl;dr :", "a cat", "the dog barked", criterion="b"),
    _pair("the sky . tl;dr :", "the sky", "a sky", criterion="a"),
]


def _criteria_model(tiny_rm):
    from alignloop.models import RewardModel

    torch.manual_seed(0)
    return RewardModel.from_pretrained(tiny_rm, heads=["a", "b"])


def test_criteria_loss_by_hand_each_pair_on_its_own_head(tiny_rm):
    rm = _criteria_model(tiny_rm)
    groups = group_pairs(CRITERIA_PAIRS)
    tokenize_groups(groups, rm.tokenizer, 64)
    heads = Heads(read="criterion", criteria=("a", "b"))
    batch = collate(groups, pad_id=0, heads=heads)
    assert batch.criterion.tolist() == [0, 1, 0] and batch.labeler.tolist() == [-1, -1, -1]
    rewards = rm(*batch.model_inputs())  # (N, 2): texts dog, cat, dog barked, sky, a sky
    loss, stats = batch_loss(rewards, batch, use_margin=False, center_coef=0.0,
                             columns=heads.columns(batch))  # fmt: skip
    r = rewards.tolist()
    first = (_bt(r[0][0] - r[1][0]) + _bt(r[1][1] - r[2][1])) / 2  # prompt 1: heads a, b
    second = _bt(r[3][0] - r[4][0])  # prompt 2: head a
    assert loss.item() == pytest.approx((first + second) / 2, rel=1e-5)
    right = [r[0][0] > r[1][0], r[1][1] > r[2][1], r[3][0] > r[4][0]]
    assert stats["accuracy"].item() == pytest.approx(sum(right) / 3)


def test_a_pair_of_one_criterion_gives_no_gradient_to_another_heads_row(tiny_rm):
    rm = _criteria_model(tiny_rm)
    heads = Heads(read="criterion", criteria=("a", "b"))
    config = RewardConfig(model="unused", data=Path("unused"), out=Path("unused"), use_margin=False)
    for only, other in (("a", 1), ("b", 0)):
        groups = group_pairs([p for p in CRITERIA_PAIRS if p.criterion == only])
        tokenize_groups(groups, rm.tokenizer, 64)
        rm.zero_grad()
        loss, _ = step_loss(rm, collate(groups, pad_id=0, heads=heads), heads, config)
        loss.backward()
        grad = rm.hf_model.score.weight.grad  # (2, hidden)
        assert torch.count_nonzero(grad[other]) == 0  # exactly zero, not just small
        assert torch.count_nonzero(grad[1 - other]) > 0


def _one_step_changes_everything(module, batch, heads, config):
    before = {k: v.detach().clone() for k, v in module.named_parameters()}
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-3)
    user_weights = getattr(module, "labeler_weights", None)
    loss, _ = step_loss(module, batch, heads, config, user_weights=user_weights)
    loss.backward()
    optimizer.step()
    unchanged = [k for k, v in module.named_parameters() if torch.equal(v, before[k])]
    assert not unchanged, f"not trained: {unchanged}"
    return before


def test_one_criteria_step_changes_every_parameter(tiny_rm):
    rm = _criteria_model(tiny_rm)
    groups = group_pairs(CRITERIA_PAIRS)
    tokenize_groups(groups, rm.tokenizer, 64)
    heads = Heads(read="criterion", criteria=("a", "b"))
    config = RewardConfig(model="unused", data=Path("unused"), out=Path("unused"))
    _one_step_changes_everything(rm, collate(groups, pad_id=0, heads=heads), heads, config)


PERSONAL_PAIRS = [
    _pair("tl;dr :", "a dog", "a cat", labeler="ann"),
    _pair("tl;dr :", "a cat", "a dog", labeler="bob"),  # the opposite taste
    _pair("the sky . tl;dr :", "the sky", "a sky", labeler="bob"),
    _pair("a tree . tl;dr :", "a tree", "the tree", labeler="cyd"),  # not a training labeler
]


def _personal(tiny_rm, n_users=2):
    from alignloop.models import RewardModel

    torch.manual_seed(0)
    rm = RewardModel.from_pretrained(tiny_rm, heads=["feature_0", "feature_1", "feature_2"])
    return PersonalRewardModel(rm, n_users, seed=0)


def _personal_batch(tiny_rm):
    """A personal model of two labelers and a batch of the first three pairs (ann, bob,
    bob; cyd is a labeler it was not trained on)."""
    module = _personal(tiny_rm)
    heads = Heads(read="labeler", labelers=("ann", "bob", "cyd"), n_users=2)
    groups = group_pairs(PERSONAL_PAIRS[:3])
    tokenize_groups(groups, module.reward_model.tokenizer, 64)
    return module, heads, collate(groups, pad_id=0, heads=heads)


def test_personal_loss_by_hand_each_pair_with_its_labelers_weights(tiny_rm):
    module, heads, batch = _personal_batch(tiny_rm)
    assert batch.labeler.tolist() == [0, 1, 1]
    config = RewardConfig(model="unused", data=Path("unused"), out=Path("unused"),
                          personal_l2=0.1)  # fmt: skip
    loss, _ = step_loss(module, batch, heads, config, user_weights=module.labeler_weights)
    with torch.no_grad():
        f = module.reward_model(*batch.model_inputs())  # (N, 3) texts: dog, cat, sky, a sky
        w = module.labeler_weights  # (2, 3)
        d = [w[0] @ (f[0] - f[1]), w[1] @ (f[1] - f[0]), w[1] @ (f[2] - f[3])]
        penalty = ((w**2).sum(1)).mean().item()
        # the default user is the mean of the labelers; forward gives (N, U + 1)
        out = module(*batch.model_inputs())
        torch.testing.assert_close(out, f @ torch.cat([w, w.mean(0, keepdim=True)]).T)
    first = (_bt(d[0].item()) + _bt(d[1].item())) / 2
    expected = (first + _bt(d[2].item())) / 2 + 0.1 * penalty
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_personal_shrink_adds_the_labelers_spread_from_their_mean(tiny_rm):
    module, heads, batch = _personal_batch(tiny_rm)
    kwargs = {"model": "unused", "data": Path("unused"), "out": Path("unused"), "personal_l2": 0}
    plain, _ = step_loss(module, batch, heads, RewardConfig(**kwargs),
                         user_weights=module.labeler_weights)  # fmt: skip
    shrunk, _ = step_loss(module, batch, heads, RewardConfig(**kwargs, personal_shrink=0.5),
                          user_weights=module.labeler_weights)  # fmt: skip
    w = module.labeler_weights.detach()  # (2, 3): each is half their difference from the mean
    spread = ((w[0] - w[1]) / 2).square().sum().item() / w.mean(0).square().sum().item()
    assert shrunk.item() - plain.item() == pytest.approx(0.5 * spread, rel=1e-5)


def test_a_labeler_not_in_training_is_read_with_the_default_weights(tiny_rm):
    heads = Heads(read="labeler", labelers=("ann", "bob", "cyd", "unspecified"), n_users=2)
    groups = group_pairs([*PERSONAL_PAIRS, _pair("x :", "a b", "b a")])  # one without a labeler
    for g in groups:
        g.input_ids = [[5, 6]] * len(g.texts)
    batch = collate(groups, pad_id=0, heads=heads)
    assert batch.labeler.tolist() == [0, 1, 1, 2, 3]
    assert heads.columns(batch).tolist() == [0, 1, 1, 2, 2]  # column 2: the default user


def test_one_personal_step_changes_every_parameter_and_each_labelers_weights(tiny_rm):
    module = _personal(tiny_rm)
    heads = Heads(read="labeler", labelers=("ann", "bob"), n_users=2)
    groups = group_pairs(PERSONAL_PAIRS[:3])
    tokenize_groups(groups, module.reward_model.tokenizer, 64)
    config = RewardConfig(model="unused", data=Path("unused"), out=Path("unused"))
    before = _one_step_changes_everything(module, collate(groups, pad_id=0, heads=heads), heads,
                                          config)  # fmt: skip
    changed = (module.labeler_weights != before["labeler_weights"]).all(1)
    assert changed.tolist() == [True, True]  # every labeler's row


# --- 2. two labelers of opposite tastes: a personal model learns both ------------------------


def taste_pairs(n_prompts: int, seed: int, *, id_prefix: str, criteria: bool = False):
    """Per world prompt, its shortest stand-in completion against its longest (and a
    middle one), labeled by "likes-long" (the longer chosen) on even prompts and by
    "likes-short" (the shorter chosen) on odd ones; with `criteria`, the same tastes
    as criteria "detail" and "brevity", without labelers."""
    from alignloop.loop import stand_in_completions
    from alignloop.world import make_prompts

    prompts = make_prompts(n_prompts, seed, id_prefix=id_prefix)
    by_prompt: dict[str, list[str]] = {}
    for c in stand_in_completions(prompts, k=8, seed=seed):
        by_prompt.setdefault(c.prompt_id, []).append(c.completion)
    pairs = []
    for i, p in enumerate(prompts):
        texts = sorted(dict.fromkeys(by_prompt[p.id]), key=lambda t: len(t.split()))
        short = texts[0]
        for other in (texts[-1], texts[len(texts) // 2]):
            if len(other.split()) - len(short.split()) < 3:
                continue
            long_wins = i % 2 == 0
            chosen, rejected = (other, short) if long_wins else (short, other)
            name = ("likes-long", "likes-short") if not criteria else ("detail", "brevity")
            who = {"criterion" if criteria else "labeler": name[0] if long_wins else name[1]}
            pairs.append(Comparison(prompt=p.prompt, chosen=chosen, rejected=rejected,
                                    prompt_id=p.id, **who))  # fmt: skip
    return pairs


@pytest.fixture(scope="module")
def taste_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("taste-data")
    paths = {k: root / f"{k}.jsonl" for k in ("train", "eval", "crit_train", "crit_eval")}
    write_records(paths["train"], taste_pairs(80, 0, id_prefix="train"))
    held = taste_pairs(40, 1, id_prefix="eval")
    newcomer = [p.model_copy(update={"labeler": "newcomer"}) for p in held[:6]]
    write_records(paths["eval"], held + newcomer)
    write_records(paths["crit_train"], taste_pairs(80, 0, id_prefix="train", criteria=True))
    write_records(paths["crit_eval"], taste_pairs(40, 1, id_prefix="eval", criteria=True))
    return paths


def _train(tiny_rm, data: Path, held: Path, out: Path, *extra: str) -> dict:
    args = ["train-rm", "--model", str(tiny_rm), "--data", str(data), "--eval-data", str(held),
            "--out", str(out), "--lr", "3e-3", "--epochs", "3", "--warmup-ratio", "0",
            "--save-every", "0", "--eval-every", "0", *extra]  # fmt: skip
    assert main(args) == 0
    return json.loads((out / "eval.json").read_text())


@pytest.fixture(scope="module")
def taste_runs(tiny_rm, taste_data, tmp_path_factory) -> dict[str, tuple[Path, dict]]:
    root = tmp_path_factory.mktemp("taste-runs")
    found = {}
    for name, extra in (("one", ()), ("personal", ("--heads", "personal", "--features", "4"))):
        found[name] = root / name, _train(tiny_rm, taste_data["train"], taste_data["eval"],
                                          root / name, *extra)  # fmt: skip
    return found


def test_a_personal_model_learns_opposite_tastes_that_one_reward_cannot(taste_runs):
    pooled, personal = taste_runs["one"][1], taste_runs["personal"][1]
    tastes = ("likes-long", "likes-short")
    # one reward serves one taste at the other's expense: about half right on average
    pooled_acc = [pooled["by_labeler"][n]["accuracy"] for n in tastes]
    assert sum(pooled_acc) / 2 < 0.7, pooled["by_labeler"]
    for name in tastes:
        mine = personal["by_labeler"][name]
        assert mine["n"] == pooled["by_labeler"][name]["n"] > 30
        assert mine["accuracy"] >= 0.9, personal["by_labeler"]
    assert (
        sum(personal["by_labeler"][n]["accuracy"] for n in tastes) / 2 > sum(pooled_acc) / 2 + 0.25
    )
    # a labeler not in training is scored with the default weights, and eval.json says so
    assert personal["unseen_labelers"]["names"] == ["newcomer"]
    assert personal["by_labeler"]["newcomer"]["n"] == 6
    assert personal["heads"] == [f"feature_{i}" for i in range(4)]
    assert "heads" not in pooled and "unseen_labelers" not in pooled


def test_a_saved_personal_model_has_its_users_on_the_normalized_features(taste_runs, taste_data):
    from transformers import AutoModelForSequenceClassification

    from alignloop.models import PERSONAL_KEY, RewardModel
    from alignloop.train.reward import load_pairs

    out, final = taste_runs["personal"]
    record = json.loads((out / "config.json").read_text())[PERSONAL_KEY]
    assert sorted(record["users"]) == ["likes-long", "likes-short"]
    users = torch.tensor(list(record["users"].values()))  # (2, 4)
    torch.testing.assert_close(torch.tensor(record["default"]), users.mean(0))
    rm = RewardModel.from_pretrained(out, new_head=False)
    assert rm.users == record["users"] and rm.n_heads == 4
    # each user's reward has mean 0 and std 1 on the training completions
    groups = group_pairs(load_pairs(taste_data["train"]))
    prompts = [g.prompt for g in groups for _ in g.texts]
    texts = [t for g in groups for t in g.texts]
    rewards = {}
    for name in record["users"]:
        r = rewards[name] = torch.tensor(rm.score(prompts, texts, weights=rm.user_weights(name)))
        assert r.mean().item() == pytest.approx(0.0, abs=1e-4)
        assert r.std().item() == pytest.approx(1.0, abs=1e-4)
    # opposite tastes: what one user likes the other does not
    both = torch.stack([rewards["likes-long"], rewards["likes-short"]])
    assert torch.corrcoef(both)[0, 1] < -0.5
    # an ordinary folder: plain transformers loads the D features
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and model.config.num_labels == 4


def test_eval_rm_reads_each_pair_with_its_labelers_weights_as_training_did(taste_runs, taste_data,
                                                                          capsys):  # fmt: skip
    out, final = taste_runs["personal"]
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out), "--data", str(taste_data["eval"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["read"] == "each pair with its own labeler's weights"
    assert result["accuracy"] == pytest.approx(final["accuracy"])
    for name, row in final["by_labeler"].items():
        if name != "newcomer":  # the default user's weights are averaged after rescaling
            assert result["by_labeler"][name] == pytest.approx(row)
    assert result["unseen_labelers"]["names"] == ["newcomer"]
    # as one labeler: their taste is right on their pairs and wrong on the other's
    assert main(["eval-rm", "--model", str(out), "--data", str(taste_data["eval"]),
                 "--user", "likes-long"]) == 0  # fmt: skip
    as_long = json.loads(capsys.readouterr().out)
    assert as_long["by_labeler"]["likes-long"]["accuracy"] >= 0.9
    assert as_long["by_labeler"]["likes-short"]["accuracy"] <= 0.1
    assert as_long["weights"] == pytest.approx(
        dict(zip([f"feature_{i}" for i in range(4)],
                 json.loads((out / "config.json").read_text())["alignloop_personal"]["users"][
                     "likes-long"], strict=True))
    )  # fmt: skip


def _score_files(tmp_path: Path, data: Path) -> tuple[Path, Path]:
    """prompts.jsonl and completions.jsonl of the pairs' prompts and texts."""
    from alignloop.train.reward import load_pairs

    pairs = load_pairs(data)[:4]
    prompts = {p.prompt_id: p.prompt for p in pairs}
    (tmp_path / "p.jsonl").write_text("".join(
        json.dumps({"id": i, "prompt": t}) + "\n" for i, t in prompts.items()))  # fmt: skip
    (tmp_path / "c.jsonl").write_text("".join(
        json.dumps({"id": f"c{j}", "prompt_id": p.prompt_id, "completion": p.chosen}) + "\n"
        for j, p in enumerate(pairs)))  # fmt: skip
    return tmp_path / "p.jsonl", tmp_path / "c.jsonl"


def _score(model: Path, prompts: Path, completions: Path, out: Path, *extra: str) -> list[dict]:
    argv = ["score", "--model", str(model), "--data", str(completions), "--prompts",
            str(prompts), "--out", str(out), *extra]  # fmt: skip
    assert main(argv) == 0
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_score_writes_every_heads_score_and_the_combination(taste_runs, taste_data, tmp_path):
    from alignloop.models import RewardModel

    out, _ = taste_runs["personal"]
    prompts, completions = _score_files(tmp_path, taste_data["eval"])
    rows = _score(out, prompts, completions, tmp_path / "s.jsonl")
    rm = RewardModel.from_pretrained(out)
    features = torch.tensor([list(r["rewards"].values()) for r in rows])  # (4, 4)
    assert list(rows[0]["rewards"]) == rm.head_names
    default = features @ rm.weight_vector(None)
    torch.testing.assert_close(torch.tensor([r["reward"] for r in rows]), default)
    as_short = _score(out, prompts, completions, tmp_path / "u.jsonl", "--user", "likes-short")
    short = rm.weight_vector(rm.user_weights("likes-short"))
    torch.testing.assert_close(torch.tensor([r["reward"] for r in as_short]), features @ short)
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"user": "zoe", "weights": {"feature_1": 2.0}}))
    as_zoe = _score(out, prompts, completions, tmp_path / "z.jsonl", "--user-weights", str(weights))
    torch.testing.assert_close(torch.tensor([r["reward"] for r in as_zoe]), 2.0 * features[:, 1])
    summed = _score(out, prompts, completions, tmp_path / "r.jsonl", "--reward", "feature_0=1",
                    "--reward", "feature_3=-0.5")  # fmt: skip
    torch.testing.assert_close(torch.tensor([r["reward"] for r in summed]),
                               features[:, 0] - 0.5 * features[:, 3])  # fmt: skip
    # a one-output model's rows are as they were
    plain = _score(taste_runs["one"][0], prompts, completions, tmp_path / "one.jsonl")
    assert set(plain[0]) == {"id", "prompt_id", "reward"}


# --- 3. several criteria -------------------------------------------------------------------


@pytest.fixture(scope="module")
def criteria_run(tiny_rm, taste_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("criteria-run") / "rm"
    return out, _train(tiny_rm, taste_data["crit_train"], taste_data["crit_eval"], out,
                       "--heads", "criteria")  # fmt: skip


def test_criteria_heads_learn_each_criterion_on_its_own_head(criteria_run, taste_data, capsys,
                                                             tmp_path):  # fmt: skip
    from alignloop.models import RewardModel

    out, final = criteria_run
    assert final["heads"] == ["brevity", "detail"]  # sorted criterion names
    for name in ("brevity", "detail"):
        assert final["by_criterion"][name]["accuracy"] >= 0.9, final["by_criterion"]
    assert len(final["gain"]) == len(final["bias"]) == 2  # normalized head by head
    rm = RewardModel.from_pretrained(out, new_head=False)
    assert rm.head_names == ["brevity", "detail"] and rm.default_weights is None
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out), "--data", str(taste_data["crit_eval"])]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["read"] == "each pair on its own criterion's head"
    assert result["by_criterion"] == final["by_criterion"]  # counts: exact ratios
    # score: without weights, every head's score and no combination
    prompts, completions = _score_files(tmp_path, taste_data["crit_eval"])
    rows = _score(out, prompts, completions, tmp_path / "s.jsonl")
    assert set(rows[0]) == {"id", "prompt_id", "rewards"} and list(rows[0]["rewards"]) == [
        "brevity", "detail"]  # fmt: skip
    rows = _score(out, prompts, completions, tmp_path / "w.jsonl", "--reward", "detail=1")
    assert [r["reward"] for r in rows] == pytest.approx([r["rewards"]["detail"] for r in rows])


def test_several_criteria_are_still_refused_with_heads_one(tiny_rm, taste_data, tmp_path, capsys):
    out = tmp_path / "rm"
    args = ["train-rm", "--model", str(tiny_rm), "--data", str(taste_data["crit_train"]),
            "--out", str(out)]  # fmt: skip
    assert main(args) == 2
    assert "holds pairs of several criteria (brevity, detail); choose one with --criterion" in (
        capsys.readouterr().err
    )
    assert not out.exists()


def test_labeler_keeps_one_labelers_pairs(tmp_path, taste_data):
    from alignloop.train.reward import _read_data

    config = RewardConfig(model="unused", data=taste_data["train"], eval_data=taste_data["eval"],
                          out=tmp_path / "rm", labeler="likes-short")  # fmt: skip
    train, held = _read_data(config)
    assert {n for g in train + held for n in g.labelers} == {"likes-short"}
    assert sum(len(g.pairs) for g in train) > 20


# --- 4. errors: one line naming the flag or the file (and line), before anything is written --


def _error(capsys, argv: list[str]) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    lines = [line for line in capsys.readouterr().err.strip().splitlines() if "it/s]" not in line]
    assert len(lines) == 1, lines
    return lines[0]


def test_training_errors_name_the_flag_or_file(tiny_rm, taste_data, tmp_path, capsys):
    out = tmp_path / "rm"
    base = ["train-rm", "--model", str(tiny_rm), "--out", str(out)]
    one_criterion = tmp_path / "one.jsonl"
    write_records(one_criterion, [_pair("tl;dr :", "a", "b", labeler="ann")])
    assert _error(capsys, [*base, "--data", str(one_criterion), "--heads", "criteria"]) == (
        f"error: {one_criterion}: --heads criteria: its pairs are of one criterion only "
        "(unspecified); train with --heads one"
    )
    no_labeler = tmp_path / "no-labeler.jsonl"
    write_records(no_labeler, [_pair("tl;dr :", "a", "b", labeler="ann"), _pair("x :", "a", "b")])
    assert _error(capsys, [*base, "--data", str(no_labeler), "--heads", "personal"]) == (
        f"error: {no_labeler}:2: field 'labeler': --heads personal learns each labeler's "
        "weights, and this pair names no labeler"
    )
    line = _error(capsys, [*base, "--data", str(taste_data["crit_train"]), "--heads", "criteria",
                           "--criterion", "detail"])  # fmt: skip
    assert line.startswith("error: --criterion detail trains on one criterion's pairs, --heads ")
    assert _error(capsys, [*base, "--data", str(taste_data["train"]), "--labeler", "nobody"]) == (
        f"error: {taste_data['train']}: no pairs of labeler 'nobody' (it holds pairs of "
        "likes-long, likes-short)"
    )
    unknown = tmp_path / "unknown.jsonl"
    write_records(unknown, [_pair("tl;dr :", "a", "b", criterion="honesty")])
    assert _error(capsys, [*base, "--data", str(taste_data["crit_train"]), "--heads", "criteria",
                           "--eval-data", str(unknown)]) == (
        f"error: {unknown}:1: criterion 'honesty': --data has no pairs of it, so no head reads "
        "it (the heads: brevity, detail)"
    )  # fmt: skip
    line = _error(capsys, [*base, "--data", str(taste_data["train"]), "--heads", "personal",
                           "--features", "1"])  # fmt: skip
    assert line == "error: --features must be at least 2"
    assert not out.exists()


def test_scoring_errors_name_the_flag(taste_runs, criteria_run, taste_data, tmp_path, capsys):
    prompts, completions = _score_files(tmp_path, taste_data["eval"])
    base = ["score", "--data", str(completions), "--prompts", str(prompts), "--out",
            str(tmp_path / "s.jsonl")]  # fmt: skip
    personal, criteria = str(taste_runs["personal"][0]), str(criteria_run[0])
    assert _error(capsys, [*base, "--model", personal, "--reward", "feature_0"]) == (
        "error: --reward 'feature_0': expected NAME=WEIGHT, e.g. helpfulness=1.0"
    )
    assert _error(capsys, [*base, "--model", personal, "--reward", "kindness=1"]) == (
        "error: --reward: the reward model has no head 'kindness' (its heads: feature_0, "
        "feature_1, feature_2, feature_3)"
    )
    assert _error(capsys, [*base, "--model", personal, "--user", "zoe"]).startswith(
        "error: --user zoe: not a user of the reward model (its users: likes-long, likes-short)"
    )
    assert _error(capsys, [*base, "--model", criteria, "--user", "likes-long"]).startswith(
        "error: --user likes-long: the reward model has no users"
    )
    both = [*base, "--model", personal, "--user", "likes-long", "--reward", "feature_0=1"]
    assert _error(capsys, both).startswith("error: --reward and --user: give one")
    assert not (tmp_path / "s.jsonl").exists()
    line = _error(capsys, ["eval-rm", "--model", criteria, "--data", str(taste_data["eval"])])
    assert line.startswith(f"error: {taste_data['eval']}: pairs of criterion 'unspecified', "
                           "which the reward model has no head for")  # fmt: skip


# --- 5. a personal model's labeler weights on two processes and through a resume -------------


def _personal_args(model: Path, data: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["train-rm", "--model", str(model), "--data", str(data["train"]), "--eval-data",
            str(data["eval"]), "--out", str(out), "--lr", "3e-3", "--epochs", "2",
            "--warmup-ratio", "0", "--heads", "personal", "--features", "4", *extra]  # fmt: skip


@pytest.mark.slow
def test_personal_on_two_processes_gives_the_result_of_one(tiny_rm, taste_data, tmp_path, runs):
    """The labelers' weights are part of the prepared model: DDP averages their
    gradients as the backbone's, so 2 x 4 prompts a step learn what 8 do."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(_personal_args(tiny_rm, taste_data, one, "--batch-size", "8",
                               "--save-every", "0")) == 0  # fmt: skip
    runs.run(_personal_args(tiny_rm, taste_data, two, "--batch-size", "4", "--save-every", "0"),
             processes=2)  # fmt: skip
    a, b = (json.loads((d / "eval.json").read_text()) for d in (one, two))
    assert b["num_processes"] == 2 and b["steps"] == a["steps"] and b["n"] == a["n"]
    for name, row in a["by_labeler"].items():
        assert b["by_labeler"][name]["n"] == row["n"]
        assert b["by_labeler"][name]["accuracy"] == pytest.approx(row["accuracy"], abs=0.05)
    users = [json.loads((d / "config.json").read_text())["alignloop_personal"]["users"]
             for d in (one, two)]  # fmt: skip
    for name in users[0]:
        torch.testing.assert_close(torch.tensor(users[1][name]), torch.tensor(users[0][name]),
                                   rtol=0, atol=2e-3)  # fmt: skip


@pytest.mark.slow
def test_a_killed_personal_run_resumes_with_its_labelers_weights(tiny_rm, taste_data, tmp_path,
                                                                 runs):  # fmt: skip
    """The checkpoint holds the labelers' weights: the resumed run leaves the same log,
    model bytes and users as an uninterrupted one."""
    args = ("--batch-size", "4", "--save-every", "2", "--log-every", "5", "--eval-every", "10")
    whole, killed = runs.resume_after_sigkill(
        lambda out: _personal_args(tiny_rm, taste_data, out, *args), tmp_path, step=8, steps=40
    )
    saved = [json.loads((d / "config.json").read_text()) for d in (whole, killed)]
    assert saved[0]["alignloop_personal"] == saved[1]["alignloop_personal"]
