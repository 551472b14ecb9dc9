"""The PPO update's policy pass (forward and backward of the response log-probabilities)
three ways, on the PPO workload's policy and prompts: padded minibatches (trimmed to
their own longest prompt and response, the default), packed rows (`--pack-rows`), and
padded under `torch.compile` (inductor), whose compile time is counted apart.

    .venv/bin/python benchmarks/update_passes.py [--batches 8]   # after run.py prepared

The responses are the policy's own samples (temperature 0.7, up to 32 tokens, as the
workload), drawn once; every way runs the same minibatches of 8 episodes (the
workload's micro-batch). 2 threads, OMP_WAIT_POLICY=PASSIVE, as the workloads;
median of 5 timed passes over all minibatches after one warm-up pass. Prints a small
table and each way's padding share; writes nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CHILD_ENV, PATHS, read_jsonl  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    if any(os.environ.get(k) != v for k, v in CHILD_ENV.items()):
        os.execve(sys.executable, [sys.executable, __file__, *(argv or sys.argv[1:])],
                  {**os.environ, **CHILD_ENV})  # fmt: skip
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=8, help="minibatches of 8 episodes")
    parser.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
    args = parser.parse_args(argv)
    import torch

    from alignloop.generate import sample
    from alignloop.losses import logprobs_from_logits
    from alignloop.models import ResponseBatch, load_policy, response_logits

    torch.manual_seed(0)
    policy, tokenizer = load_policy(PATHS["policy"])
    texts = [r["prompt"] for r in read_jsonl(PATHS["prompts_train"])][: 8 * args.batches]
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-64:] for t in texts]
    batches = []
    for i in range(0, len(rows), 8):
        s = sample(policy, tokenizer, rows[i : i + 8], k=1, temperature=0.7, max_new_tokens=32)
        T = int(s.response_mask.sum(1).max())
        batches.append(tuple(t.clone() for t in (  # out of inference mode, for autograd
            s.query_ids, s.query_mask, s.response_ids[:, :T], s.response_mask[:, :T].float()
        )))  # fmt: skip
    policy.train()

    def one_pass(model, pack: bool) -> None:
        for q, qm, r, rm in batches:
            batch = ResponseBatch(q, qm, r, rm, pack=pack)
            logits, _ = response_logits(model, batch, 0.7)
            (logprobs_from_logits(logits, r) * rm).sum().backward()
        model.zero_grad(set_to_none=True)

    def timed(model, pack: bool) -> float:
        one_pass(model, pack)  # warm-up
        times = []
        for _ in range(5):
            start = time.perf_counter()
            one_pass(model, pack)
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def share(pack: bool) -> float:
        p = [ResponseBatch(*b, pack=pack).padding() for b in batches]
        return float(sum(x[0] for x in p) / sum(x[1] for x in p))

    results = {"padded": (timed(policy, False), share(False)),
               "packed": (timed(policy, True), share(True))}  # fmt: skip
    compile_s = None
    if not args.no_compile:
        compiled = torch.compile(policy, dynamic=True)
        start = time.perf_counter()
        one_pass(compiled, False)  # compiles (shapes vary: dynamic)
        compile_s = time.perf_counter() - start
        results["padded, torch.compile"] = (timed(compiled, False), share(False))
    base = results["padded"][0]
    print(f"{len(batches)} minibatches of 8 episodes, forward + backward of the policy pass")
    print(f"{'way':<24} {'seconds':>8} {'speed-up':>9} {'padding':>8}")
    for name, (seconds, pad) in results.items():
        print(f"{name:<24} {seconds:8.3f} {base / seconds:8.2f}x {pad:8.1%}")
    if compile_s is not None:
        print(f"torch.compile's first pass (compiling): {compile_s:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
