"""The AI-judge source through a whole round (two criteria: a reward model each),
an AI judge beside the simulated labelers (its agreement with them reported), and
PPO's --reference: the KL's reference policy when it is not the start."""

from __future__ import annotations

import json

import pytest

from .conftest import run_loop_process

pytestmark = pytest.mark.slow


def test_judge_source_ranks_and_each_criterion_gets_a_reward_model(loop_yaml, tmp_path):
    out = tmp_path / "judged"
    config = loop_yaml(out, source="judge", ai_judge="alignloop.world:gold_utility",
                       criteria=["gold", "again"], rounds=1, ppo_steps=2)  # fmt: skip
    done = run_loop_process(config)
    assert done.returncode == 0, done.stderr[-3000:]
    d = out / "round-1"
    rankings = [json.loads(line) for line in (d / "rankings.jsonl").read_text().splitlines()]
    assert len(rankings) == 12 * 2  # one ranking per prompt and criterion
    assert {r["labeler"] for r in rankings} == {"ai-judge"}
    for criterion in ("gold", "again"):
        assert (d / f"rm-{criterion}" / "model.safetensors").exists()
        assert json.loads((d / f"rm-{criterion}" / "held_out.json").read_text())["n_gold_pairs"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["rounds"][0]["n_rankings"] == 24


def test_an_ai_judge_beside_the_labelers_reports_its_agreement(loop_yaml, tmp_path):
    out = tmp_path / "both"
    config = loop_yaml(out, ai_judge="alignloop.world:gold_utility", rounds=1, ppo_steps=2)
    done = run_loop_process(config)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((out / "round-1" / "agreement.json").read_text())
    assert info["source"] == "simulated"
    # the simulated labelers rank by the gold judge, noisily: the judge mostly agrees
    assert 0.5 < info["ai_judge"]["agreement"] <= 1.0 and info["ai_judge"]["pairs"] > 0
    record = json.loads((out / "round-1" / "metrics.json").read_text())
    assert record["ai_judge_agreement"] == info["ai_judge"]["agreement"]


def test_ppo_reference_is_the_start_by_default_and_another_policy_when_given(
    tiny_world, tmp_path, one_thread
):
    from alignloop.models import build_tiny_causal_lm, load_policy
    from alignloop.train.ppo import PPOConfig, train_ppo

    reward = tmp_path / "reward.py"  # longer is better: a reward with no model
    reward.write_text("def reward(prompts, completions):\n"
                      "    return [float(len(c.split())) for c in completions]\n")  # fmt: skip
    _, tokenizer = load_policy(tiny_world["policy_init"])
    other = tmp_path / "other"
    build_tiny_causal_lm(tokenizer, seed=123).save_pretrained(other)
    tokenizer.save_pretrained(other)

    def first_kl(reference, name):
        train_ppo(PPOConfig(
            policy=str(tiny_world["policy_init"]), prompts=tiny_world["prompts_train"],
            out=tmp_path / name, reward_fn=f"{reward}:reward", reference=reference,
            batch_size=4, minibatch_size=2, max_steps=1, max_new_tokens=8, save_every=0,
            sample_every=0, lr=1e-4,
        ))  # fmt: skip
        line = (tmp_path / name / "metrics.jsonl").read_text().splitlines()[0]
        return json.loads(line)["ppo/kl"]

    # the first rollout: the policy is its reference, so KL 0 up to the ~1e-7 by which the
    # sampler's log-probabilities (the old ones under --recompute-logprobs auto) differ
    # from the reference's full pass; another reference is far from that
    assert abs(first_kl(None, "start")) < 1e-5
    assert abs(first_kl(str(other), "other")) > 1e-3
