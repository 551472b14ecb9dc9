"""alignloop's side of each workload: its own trainers, on the prepared inputs, in the
repository's environment (.venv). Run by run.py, one process per run:

    .venv/bin/python benchmarks/alignloop_side.py reward|ppo|rloo --spec S.json --out R.json
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Phases, child_main, read_jsonl, versions  # noqa: E402


def pad_shares(log: list[dict]) -> dict[str, float]:
    """Mean over the run of every padding share the trainer logs: `rm/pad_share` (padded
    positions of each reward-model batch), `ppo/pad_share_rollout` (of sampling, every
    row at the batch's full width, as TRL pads them), `ppo/pad_share_passes` (the
    rollout's policy, reference and value passes as they ran: full width, or packed)
    and `ppo/pad_share_update` (of the update's minibatches, trimmed or packed)."""
    values: dict[str, list[float]] = {}
    for line in log:
        for k, v in line.items():
            if "pad_share" in k and isinstance(v, int | float):
                values.setdefault(k, []).append(float(v))
    return {k: round(sum(v) / len(v), 4) for k, v in values.items()}


def reward(spec: dict, phases: Phases) -> dict:
    """Bradley-Terry reward model: alignloop.train.reward.train_reward_model."""
    from alignloop.train.reward import train_reward_model
    from alignloop.train.reward_config import RewardConfig

    # The spec may set the length grouping and the packing (benchmarks/rm_folds.py
    # compares settings); otherwise alignloop's defaults.
    chosen = {k: spec[k] for k in ("group_by_length", "pack") if k in spec}
    config = RewardConfig(
        **chosen,
        model=spec["model"],
        data=Path(spec["train"]),
        eval_data=Path(spec["eval"]),
        out=Path(spec["out"]),
        max_length=spec["max_length"],
        epochs=spec["epochs"],
        batch_size=spec["batch_size"],
        lr=spec["lr"],
        weight_decay=0.0,
        warmup_ratio=0.0,
        scheduler="linear",
        max_grad_norm=1.0,
        seed=spec["seed"],
        eval_every=0,
        save_every=0,
        log_every=10,
        norm_samples=spec["norm_samples"],
        eval_batch_size=spec["eval_batch_size"],
        mixed_precision="no",
    )
    with phases("train_call"):  # load, tokenize, train, evaluate, normalize, save
        final = train_reward_model(config)
    return {
        "train_seconds": final.get("train_seconds"),
        "pad_shares": pad_shares(read_jsonl(Path(config.out) / "metrics.jsonl")),
        "own_eval": {k: final[k] for k in ("accuracy", "mean_margin", "loss", "n")},
        "model_dir": spec["out"],
        "versions": versions("torch", "transformers", "accelerate", "alignloop"),
    }


def _rl_config(spec: dict, **overrides):
    from alignloop.train.ppo_config import PPOConfig

    options = {
        "policy": spec["policy"],
        "prompts": Path(spec["prompts"]),
        "out": Path(spec["out"]),
        "reward_model": spec["reward_model"],
        "temperature": spec["temperature"],
        "max_new_tokens": spec["response_length"],
        "max_prompt_length": spec["max_prompt_length"],
        "missing_eos_score": None,
        "kl_coef": spec["kl_coef"],
        "kl_estimator": "k1",
        "batch_size": spec["batch_size"],
        "lr": spec["lr"],
        "scheduler": "linear",
        "max_steps": spec["steps"],
        "save_every": 0,
        "sample_every": 0,
        "mixed_precision": "no",
        "seed": spec["seed"],
    }
    return PPOConfig(**{**options, **overrides})


def _run_rl(config, phases: Phases) -> dict:
    from alignloop.train.ppo import train_ppo

    with phases("train_call"):  # load the models, train, save the policy
        final = train_ppo(config)
    log = read_jsonl(Path(config.out) / "metrics.jsonl")
    steps = [r for r in log if "ppo/reward_mean" in r]
    return {
        "episodes": final["episodes"],
        "train_seconds": final["ppo/seconds"],
        "pad_shares": pad_shares(log),
        "score_per_step": [r["ppo/reward_mean"] for r in steps],
        "kl_per_step": [r["ppo/kl"] for r in steps],
        "response_length_per_step": [r["ppo/response_length"] for r in steps],
        "model_dir": str(config.out),
        "versions": versions("torch", "transformers", "accelerate", "alignloop"),
    }


def ppo(spec: dict, phases: Phases) -> dict:
    """PPO with a critic started from the reward model: alignloop.train.ppo.train_ppo."""
    config = _rl_config(
        spec,
        samples_per_prompt=1,
        minibatch_size=spec["minibatch_size"],
        grad_accum=spec["grad_accum"],
        ppo_epochs=spec["ppo_epochs"],
        vf_coef=0.1,
        clip_eps=0.2,
        value_clip_eps=0.2,
        gamma=1.0,
        lam=0.95,
        whiten_advantages=True,
        max_grad_norm=0.0,  # TRL 1.12's PPO does not clip gradients
        critic="separate",
        pack_rows=spec.get("pack_rows", False),
    )
    return _run_rl(config, phases)


def rloo(spec: dict, phases: Phases) -> dict:
    """REINFORCE leave-one-out: train_ppo with `advantage="rloo"` (no critic)."""
    config = _rl_config(
        spec,
        advantage="rloo",
        samples_per_prompt=spec["k"],
        minibatch_size=spec["batch_size"] * spec["k"],
        grad_accum=spec["grad_accum"],
        ppo_epochs=1,
        clip_eps=0.2,
        whiten_advantages=False,  # TRL's RLOO default (normalize_advantages=False)
        max_grad_norm=1.0,
        pack_rows=spec.get("pack_rows", False),
    )
    return _run_rl(config, phases)


if __name__ == "__main__":
    child_main({"reward": reward, "ppo": ppo, "rloo": rloo})
