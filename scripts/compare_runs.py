"""Two demo settings compared on the same seeds, paired (issue 14: "N rounds beat one
round at the same label budget, a paired comparison with its standard error").

    .venv/bin/python scripts/compare_runs.py A1:B1 [A2:B2 ...] [--json OUT.json]

Each argument names two finished `alignloop demo` directories of the same seed (the
same held-out documents, the same SFT samples): A, the setting under test (say
`--rounds 2`), B, the one it is compared with (one round). On each held-out sample j
of each document, both tuned policies' j-th samples and SFT's j-th sample are scored
by the gold judge. Per seed and pooled over seeds:

- `a_vs_sft`, `b_vs_sft`: each setting's win rate over SFT (ties half), as the demo
  reports it;
- `difference`: the mean of (A's outcome - B's outcome) against the same SFT sample,
  with its standard error (the samples taken as independent): A's gain in win rate;
- `head_to_head`: A's sample against B's, win rate (ties half) and standard error.

The standard errors see the evaluation's noise only (which samples were drawn), not
a PPO run's own variance: that shows in the spread over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path


def _outcome(a: float, b: float) -> float:
    """1, 0.5 or 0: exact ties count half, as the demo's `win_rate` counts them."""
    return 0.5 if a == b else float(a > b)


def _mean_se(values: list[float]) -> dict[str, float]:
    n = len(values)
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(n) if n > 1 else 0.0
    return {"mean": round(mean, 4), "se": round(se, 4), "n": n}


def _gold(run: Path, name: str, prompts) -> dict[str, float]:
    from alignloop.io import read_records
    from alignloop.schema import Completion
    from alignloop.world import gold_utility

    return {c.id: gold_utility(prompts[c.prompt_id], c.completion)
            for c in read_records(run / "eval" / f"completions_{name}.jsonl", Completion)}


def outcomes(a_run: Path, b_run: Path) -> dict[str, list[float]]:
    """Per held-out sample: A and B against SFT, and A against B."""
    from alignloop.io import read_records
    from alignloop.schema import Prompt

    prompts = {p.id: p for p in read_records(a_run / "world" / "prompts_eval.jsonl", Prompt)}
    other = {p.id: p.prompt for p in read_records(b_run / "world" / "prompts_eval.jsonl", Prompt)}
    if {k: p.prompt for k, p in prompts.items()} != other:
        raise SystemExit(f"{a_run} and {b_run} hold other held-out documents (other seeds?)")
    sft_a, sft_b = _gold(a_run, "sft", prompts), _gold(b_run, "sft", prompts)
    if sft_a.keys() != sft_b.keys():
        raise SystemExit(f"{a_run} and {b_run} sampled SFT differently")
    a, b = _gold(a_run, "rlhf", prompts), _gold(b_run, "rlhf", prompts)
    out: dict[str, list[float]] = {"a": [], "b": [], "diff": [], "h2h": []}
    for i in sorted(sft_a):
        oa, ob = _outcome(a[i], sft_a[i]), _outcome(b[i], sft_a[i])
        out["a"].append(oa)
        out["b"].append(ob)
        out["diff"].append(oa - ob)
        out["h2h"].append(_outcome(a[i], b[i]))
    return out


def summary(o: dict[str, list[float]]) -> dict:
    return {"a_vs_sft": _mean_se(o["a"]), "b_vs_sft": _mean_se(o["b"]),
            "difference": _mean_se(o["diff"]), "head_to_head": _mean_se(o["h2h"])}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", help="A:B, two demo directories of one seed")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    pooled: dict[str, list[float]] = {"a": [], "b": [], "diff": [], "h2h": []}
    result = {"seeds": {}}
    for pair in args.pairs:
        a, _, b = pair.partition(":")
        o = outcomes(Path(a), Path(b))
        result["seeds"][pair] = summary(o)
        for k, v in o.items():
            pooled[k] += v
    result["pooled"] = summary(pooled)
    gains = [s["difference"]["mean"] for s in result["seeds"].values()]
    result["difference_over_seeds"] = _mean_se(gains)  # the PPO runs' spread included
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
