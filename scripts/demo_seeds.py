"""The demo's figures over seeds: `alignloop demo` once per seed, then the mean and
spread of every figure (issue 14: "figures on seeds 0, 1 and 2, mean and spread").

Each seed has its own world (documents, labelers' draws), SFT policy, rankings and
PPO run, in OUT/seed-S/; the figures are read back from each run's metrics.json.
The spread is the sample standard deviation over seeds and the range (min, max).
Figures are the same on one machine only: another CPU may round differently.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/demo_seeds.py [--seeds 0 1 2]
        [--out runs/demo-seeds] [-- any other `alignloop demo` flags, e.g. --rounds 2
        or --personal]

Writes OUT/seeds.json: per seed its metrics, and per figure {mean, std, min, max, n}.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import subprocess
import sys
import time
from pathlib import Path


def figures(metrics: dict) -> dict[str, float]:
    """The numeric figures of one run's metrics.json: its flat keys, and the last
    round's per-round figures (as `rounds/<key>`) where the run has rounds."""
    out = {k: float(v) for k, v in metrics.items()
           if isinstance(v, int | float) and not isinstance(v, bool)}  # fmt: skip
    for i, row in enumerate(metrics.get("rounds") or [], start=1):
        for k, v in row.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and k != "round":
                out[f"round_{i}/{k}"] = float(v)
    for name, t in (metrics.get("targets") or {}).items():
        out[f"target_met/{name}"] = float(bool(t.get("met")))
    out.update(_nested("personal", metrics.get("personal") or {}))  # `demo --personal`
    return out


def _nested(prefix: str, table: dict) -> dict[str, float]:
    """The numbers of a nested table as prefix/key/.../key (the personal demo's figures
    per labeler, the new user's, the criteria's)."""
    out = {}
    for k, v in table.items():
        if isinstance(v, dict):
            out.update(_nested(f"{prefix}/{k}", v))
        elif isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}/{k}"] = float(v)
    return out


def spread(values: list[float]) -> dict[str, float | int | None]:
    """Mean, sample standard deviation (None for one value), min and max."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def summarize(per_seed: dict[int, dict]) -> dict[str, dict]:
    """Per figure present in every seed's run: its spread over the seeds."""
    tables = [figures(m) for m in per_seed.values()]
    keys = [k for k in tables[0] if all(k in t for t in tables)]
    return {k: spread([t[k] for t in tables]) for k in keys}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    demo_args: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, demo_args = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=Path("runs/demo-seeds"))
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="read an existing OUT/seed-S/metrics.json instead of rerunning",
    )
    args = parser.parse_args(argv)

    per_seed: dict[int, dict] = {}
    wall: dict[int, float] = {}
    for seed in args.seeds:
        run = args.out / f"seed-{seed}"
        if not (args.reuse and (run / "metrics.json").exists()):
            command = [sys.executable, "-m", "alignloop", "demo", "--seed", str(seed),
                       "--out", str(run), *demo_args]  # fmt: skip
            print(f"seed {seed}: {' '.join(command)}", file=sys.stderr, flush=True)
            started = time.perf_counter()
            subprocess.run(command, check=True)
            wall[seed] = round(time.perf_counter() - started, 1)
        per_seed[seed] = json.loads((run / "metrics.json").read_text())

    summary = summarize(per_seed)
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "seeds": args.seeds,
        "demo_args": demo_args,
        "machine": platform.processor() or platform.machine(),
        "wall_seconds": wall,
        "summary": summary,
        "per_seed": per_seed,
    }
    (args.out / "seeds.json").write_text(json.dumps(result, indent=2) + "\n")
    width = max(len(k) for k in summary)
    print(f"{'figure':<{width}}  {'mean':>10}  {'std':>8}  {'min':>10}  {'max':>10}")
    for k, s in summary.items():
        std = "-" if s["std"] is None else f"{s['std']:.4f}"
        print(f"{k:<{width}}  {s['mean']:>10.4f}  {std:>8}  {s['min']:>10.4f}  {s['max']:>10.4f}")
    print(f"written: {args.out / 'seeds.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
