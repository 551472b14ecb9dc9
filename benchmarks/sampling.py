"""Sampling speed: alignloop's KV-cached loop against transformers' `generate`, both
through `alignloop.generate.sample` (the same prompts, the same tiny Llama policy the
PPO workload uses), and one draw per row by `generate.draw` against torch.multinomial.

    .venv/bin/python benchmarks/sampling.py      # after benchmarks/run.py has prepared

2 threads, OMP_WAIT_POLICY=PASSIVE, as the workloads; median of 7 timed calls after 2
warm-up calls. Prints a small table; writes nothing.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CHILD_ENV, PATHS, read_jsonl  # noqa: E402


def median_seconds(fn, *, warmup: int = 2, repeats: int = 7) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    if any(os.environ.get(k) != v for k, v in CHILD_ENV.items()):
        os.execve(sys.executable, [sys.executable, __file__], {**os.environ, **CHILD_ENV})
    import torch

    from alignloop import generate
    from alignloop.models import load_policy

    if not PATHS["policy"].exists():
        sys.exit("run benchmarks/run.py first: it prepares the policy in benchmarks/.work")
    policy, tokenizer = load_policy(PATHS["policy"])
    policy.eval()
    prompts = [r["prompt"] for r in read_jsonl(PATHS["prompts_train"])[:16]]
    own_loop = generate._has_standard_cache

    def run(use_own: bool):
        generate._has_standard_cache = (lambda m: True) if use_own else (lambda m: False)
        try:
            torch.manual_seed(0)
            generate.sample(policy, tokenizer, prompts, k=1, temperature=0.7,
                            max_new_tokens=32, max_prompt_length=64)  # fmt: skip
        finally:
            generate._has_standard_cache = own_loop

    logits = torch.randn(16, len(tokenizer))
    rows = [
        ("16 prompts x 32 tokens: transformers generate", median_seconds(lambda: run(False))),
        ("16 prompts x 32 tokens: alignloop decode", median_seconds(lambda: run(True))),
        ("one token for 16 rows: torch.multinomial",
         median_seconds(lambda: torch.multinomial(torch.softmax(logits, -1), 1), repeats=101)),
        ("one token for 16 rows: generate.draw",
         median_seconds(lambda: generate.draw(logits, 1.0), repeats=101)),
    ]  # fmt: skip
    print(f"| what ({torch.get_num_threads()} threads, vocabulary {len(tokenizer)}) | ms |")
    print("| --- | --- |")
    for name, seconds in rows:
        print(f"| {name} | {1000 * seconds:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
