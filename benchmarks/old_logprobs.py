"""PPO's old log-probabilities from the sampler (issue 17): how far they are from the
policy pass after sampling that `--recompute-logprobs always` runs, and what leaving
that pass out saves in a rollout (`train.ppo.make_rollout`, `sampler_logprobs=`).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/old_logprobs.py [--hidden 64] [--layers 2]

The tiny world of the tests in a temporary folder: the world's tokenizer, a random
Llama (hidden 64: the issue's tiny policy), 16 world prompts, 16 new tokens at T 0.7,
a rule reward; a separate critic (GAE) and RLOO (8 prompts x 2). One thread; each
rollout is timed 40 times, the two ways alternating, and the saving is the median of
the paired differences (robust on a busy machine). Prints a small table; writes nothing.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REWARD = "def count(prompts, completions):\n    return [c.count(' the ') for c in completions]\n"


def measure(config, texts: list[str], repeats: int) -> tuple[float, float, list, list]:
    """(max |sampler - pass| of the log-probabilities, share of tokens equal, rollout
    seconds with the pass, with the sampler's) of one variant."""
    import torch
    from rich.console import Console

    from alignloop.train.ppo import (
        _prompt_rows,
        build_models,
        load_reward_fn,
        make_rollout,
        make_score_fn,
    )

    torch.manual_seed(0)
    policy, critic, reference, reward_model, tokenizer = build_models(config, Console(quiet=True))
    rows = _prompt_rows(config, policy, tokenizer, texts)
    score_fn = make_score_fn(reward_model, load_reward_fn(config.reward_fn), config)

    def rollout(reuse: bool, seed: int):
        torch.manual_seed(seed)
        return make_rollout(policy, critic, reference, tokenizer, rows, texts, score_fn, 0.05,
                            config, sampler_logprobs=reuse)[0]  # fmt: skip

    with_pass, with_sampler = rollout(False, 0), rollout(True, 0)
    on = with_pass.response_mask.bool()
    diff = (with_sampler.logprobs - with_pass.logprobs)[on].abs()
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(repeats):
        for reuse in (False, True) if i % 2 else (True, False):
            start = time.perf_counter()
            rollout(reuse, i)
            times[reuse].append(time.perf_counter() - start)
    return diff.max().item(), (diff == 0).float().mean().item(), times[False], times[True]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=40)
    args = parser.parse_args()

    import torch

    from alignloop.io import write_records
    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.train.ppo import PPOConfig
    from alignloop.world import build_tokenizer, make_prompts

    torch.set_num_threads(1)
    print(f"hidden {args.hidden}, {args.layers} layers, 16 episodes x <= 16 tokens, 1 thread")
    print("variant | max |sampler - pass| | tokens equal | rollout: pass | sampler's | saved")
    with tempfile.TemporaryDirectory(prefix="old-logprobs-") as tmp:
        root = Path(tmp)
        tokenizer = build_tokenizer()
        policy = build_tiny_causal_lm(
            tokenizer, seed=0, hidden_size=args.hidden, num_layers=args.layers, num_heads=4
        )
        save_pretrained(policy, tokenizer, root / "policy")
        prompts = make_prompts(16, seed=0)
        write_records(root / "prompts.jsonl", prompts)
        (root / "reward.py").write_text(REWARD)
        for name, extra in (
            ("gae ", {}),
            ("rloo", {"advantage": "rloo", "samples_per_prompt": 2, "batch_size": 8}),
        ):
            options = {"batch_size": 16, "minibatch_size": 8, "max_new_tokens": 16, **extra}
            config = PPOConfig(
                policy=str(root / "policy"), prompts=root / "prompts.jsonl", out=root / "out",
                reward_fn=f"{root / 'reward.py'}:count", mixed_precision="no", **options,
            )  # fmt: skip
            texts = [p.prompt for p in prompts[: config.batch_size]]
            worst, equal, with_pass, with_sampler = measure(config, texts, args.repeats)
            saved = [a - b for a, b in zip(with_pass, with_sampler, strict=True)]
            ms = lambda x: 1000 * statistics.median(x)  # noqa: E731
            print(
                f"{name}    | {worst:20.2e} | {equal:12.0%} | {ms(with_pass):10.1f} ms | "
                f"{ms(with_sampler):6.1f} ms | {ms(saved):5.1f} ms"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
