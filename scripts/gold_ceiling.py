"""What the demo's PPO could reach with a perfect reward model (issue 14): PPO from a
demo run's SFT policy, rewarded by the hidden gold judge itself instead of the reward
model, with the demo's PPO settings; then its win rate over SFT by the gold judge on
the run's held-out documents, sampled and paired as the demo samples and pairs them.

    .venv/bin/python scripts/gold_ceiling.py --run runs/demo [--kl-coef 0.1]
        [--steps 100] [--out runs/demo-gold-kl0.1] [--seed 0]

`--run`: a finished `alignloop demo` directory (its world/, sft/ and
eval/completions_sft.jsonl). The gold utility is standardized by its mean and
standard deviation over the run's labelled SFT completions, so PPO sees it on the
reward model's scale (normalized scores, about 0 +- 1) and the KL coefficient means
what it means in the demo. A script, not a test: a run is about the demo's PPO stage
(2-4 minutes on 2 cores). Prints one JSON line; writes the policy and
`gold_ceiling.json` to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

PROMPTS_ENV = "ALIGNLOOP_GOLD_PROMPTS"  # the training prompts the reward below reads
_STATE: dict = {}


def reward(prompts: list[str], completions: list[str]) -> list[float]:
    """PPO's --reward-fn: the gold utility of each completion, standardized."""
    if not _STATE:
        from alignloop.io import read_records
        from alignloop.schema import Completion, Prompt
        from alignloop.world import gold_utility

        run = Path(os.environ[PROMPTS_ENV])
        by_text = {p.prompt: p for p in read_records(run / "world" / "prompts_train.jsonl", Prompt)}
        by_id = {p.id: p for p in by_text.values()}
        gold = [gold_utility(by_id[c.prompt_id], c.completion)
                for c in read_records(run / "completions.jsonl", Completion)]  # fmt: skip
        _STATE.update(by_text=by_text, utility=gold_utility, mean=statistics.fmean(gold),
                      sd=statistics.pstdev(gold))  # fmt: skip
    s = _STATE
    return [(s["utility"](s["by_text"][p], c) - s["mean"]) / s["sd"]
            for p, c in zip(prompts, completions, strict=True)]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished demo directory")
    parser.add_argument("--kl-coef", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (its sampling)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    run = args.run
    for need in ("sft", "world/prompts_eval.jsonl", "eval/completions_sft.jsonl"):
        if not (run / need).exists():
            parser.error(f"{run / need}: missing (run `alignloop demo --out {run}` first)")
    out = args.out or run.with_name(f"{run.name}-gold-kl{args.kl_coef:g}")
    os.environ[PROMPTS_ENV] = str(run.resolve())
    import torch

    from alignloop.evaluate.metrics import win_rate
    from alignloop.generate import generate_completions
    from alignloop.io import read_records, write_json
    from alignloop.loop.demo import DemoConfig
    from alignloop.models import load_policy
    from alignloop.schema import Completion, Prompt
    from alignloop.train.ppo import PPOConfig, train_ppo
    from alignloop.world import gold_utility

    torch.set_num_threads(1)
    cfg = DemoConfig()  # the demo's PPO settings, as its _ppo stage passes them
    train_ppo(PPOConfig(
        policy=str(run / "sft"), prompts=run / "world" / "prompts_train.jsonl", out=out,
        reward_fn=f"{Path(__file__).resolve()}:reward", temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.ppo_batch,
        minibatch_size=cfg.ppo_batch // 2, lr=cfg.ppo_lr, kl_coef=args.kl_coef,
        max_steps=args.steps, save_every=0, sample_every=0, seed=args.seed,
        recompute_logprobs="always",
    ))  # fmt: skip
    prompts = read_records(run / "world" / "prompts_eval.jsonl", Prompt)
    by_id = {p.id: p for p in prompts}
    model, tokenizer = load_policy(out)
    torch.manual_seed(args.seed + 7)  # the demo's held-out sampling seed
    tuned = generate_completions(
        model, tokenizer, prompts, k=cfg.eval_k, temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, batch_size=64, policy_name="gold-ppo",
    )  # fmt: skip
    sft = {c.id: c for c in read_records(run / "eval" / "completions_sft.jsonl", Completion)}
    a = [gold_utility(by_id[c.prompt_id], c.completion) for c in tuned]
    b = [gold_utility(by_id[c.prompt_id], sft[c.id].completion) for c in tuned]
    w = win_rate(a, b)
    result = {
        "run": str(run), "kl_coef": args.kl_coef, "steps": args.steps,
        "win_rate_vs_sft": w["rate"], "stderr": w["stderr"], "n": w["n"],
        "gold_mean": statistics.fmean(a), "gold_mean_sft": statistics.fmean(b),
    }  # fmt: skip
    write_json(out / "gold_ceiling.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
