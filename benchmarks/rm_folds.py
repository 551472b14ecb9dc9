"""The MiniLM reward model's held-out accuracy over folds and seeds (issue 17): does
grouping batches by length cost accuracy, and is alignloop's accuracy TRL's?

One 160-pair split has a standard error near 4 points and cannot show a 1-point
difference. Here the 1,600 shared HH pairs are split by prompt into K folds; each
setting trains on K-1 folds and is scored on the one left out, for every fold and
seed, so every pair is held out once per seed, and the settings are compared on the
very same folds (paired differences: the fold's difficulty cancels).

    .venv/bin/python benchmarks/rm_folds.py [--folds 5] [--seeds 0] \\
        [--settings trl,alignloop-g50,alignloop-g0,alignloop-pack-g0] [--batch-size 16]

Settings: `alignloop-gN` is alignloop's trainer with `--group-by-length N` (0: plain
random batches, as TRL's) on right-padded rows (`--no-pack`), `alignloop-pack-gN` the
same on packed rows (several texts a row, `--pack`), `trl` is TRL 1.16's
RewardTrainer on the same token ids (its environment is `make bench`'s
benchmarks/.venv-trl116). Both start from the same saved weights (all-MiniLM-L6-v2 +
a seeded head), lr 5e-5 linear, max length 128, one epoch, no warm-up, fp32, 2
threads, the issue's settings; one evaluator scores every model on the fold's token
ids. Each run's result is kept in benchmarks/.work/folds/results/ and reused (add
seeds or settings later; --force reruns). Writes bench/rm_folds.json and
bench/rm_folds.md: per setting the mean accuracy with its standard error over the
runs, each setting's paired difference from the first setting, training pairs per
second and alignloop's padding share.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import CHILD_ENV, DATA, PATHS, RESULTS, WORK, write_json  # noqa: E402

FOLDS = WORK / "folds"
FOLD_SEED = 0  # which prompt goes to which fold: fixed, so every setting sees the same folds
SPEC = {"max_length": 128, "epochs": 1, "lr": 5e-5, "eval_batch_size": 32, "norm_samples": 512}


def make_folds(k: int, max_length: int, limit: int | None = None) -> list[dict[str, Path]]:
    """K folds of the shared pairs, split by prompt (all pairs of a prompt in one fold):
    per fold its training and held-out comparisons (alignloop's input) and token ids
    (TRL's input and the evaluator's), written once. `limit`: at most that many pairs
    on each side (a smoke run)."""
    from prepare import build_minilm, write_pair_ids

    from alignloop.io import import_hh, write_records
    from alignloop.train.reward import group_pairs

    if not PATHS["minilm_init"].exists():
        build_minilm()
    pairs = import_hh(DATA).comparisons
    prompts = sorted({g.prompt for g in group_pairs(pairs)})
    random.Random(FOLD_SEED).shuffle(prompts)
    fold_of = {p: i % k for i, p in enumerate(prompts)}
    folds = []
    for i in range(k):
        d = FOLDS / f"k{k}-len{max_length}{f'-first{limit}' if limit else ''}" / f"fold-{i}"
        paths = {s: d / f"{s}.jsonl" for s in ("train", "eval")}
        paths.update({f"{s}_ids": d / f"{s}_ids.jsonl" for s in ("train", "eval")})
        if not all(p.exists() for p in paths.values()):
            train = [p for p in pairs if fold_of[p.prompt] != i]
            held = [p for p in pairs if fold_of[p.prompt] == i]
            write_records(paths["train"], train[:limit] if limit else train)
            write_records(paths["eval"], held[:limit] if limit else held)
            for s in ("train", "eval"):
                write_pair_ids(paths[s], PATHS["minilm_init"], max_length, paths[f"{s}_ids"])
        folds.append(paths)
    return folds


def alignloop_options(setting: str) -> dict:
    """RewardConfig options of an alignloop setting: `alignloop-gN`, one right-padded row
    per text (--no-pack) in batches grouped by length over windows of N (0: plain random
    batches, as TRL's); `alignloop-pack-gN`, several texts a row (the encoder's packing,
    --pack), grouped the same way."""
    m = re.fullmatch(r"alignloop-(pack-)?g(\d+)", setting)
    if m is None:
        raise SystemExit(f"--settings: {setting!r} is not trl, alignloop-gN or alignloop-pack-gN")
    return {"pack": bool(m[1]), "group_by_length": int(m[2])}


def run_one(
    setting: str, fold: dict[str, Path], seed: int, batch_size: int, spec: dict, tag: str
) -> dict:
    """Train one setting on one fold with one seed; its held-out accuracy by the one
    evaluator, speed and (alignloop) padding share. The model is deleted afterwards."""
    from run import ALIGNLOOP_PY, eval_reward_model, peer_python, run_child

    out = WORK / "runs" / tag / "model"
    spec = {**spec, "model": str(PATHS["minilm_init"]), "batch_size": batch_size,
            "seed": seed, "out": str(out)}  # fmt: skip
    if setting == "trl":
        spec.update(train_ids=str(fold["train_ids"]), eval_ids=str(fold["eval_ids"]))
        r = run_child(peer_python("rm_minilm"), "trl_side.py", "reward", spec, tag)
    else:
        spec.update(train=str(fold["train"]), eval=str(fold["eval"]), **alignloop_options(setting))
        r = run_child(ALIGNLOOP_PY, "alignloop_side.py", "reward", spec, tag)
    pairs = sum(1 for line in fold["train_ids"].open() if line.strip())
    row = {
        "setting": setting,
        "seed": seed,
        "accuracy": eval_reward_model(r["model_dir"], str(fold["eval_ids"])),
        "n_eval": sum(1 for line in fold["eval_ids"].open() if line.strip()),
        "pairs_trained": pairs,
        "train_seconds": r["train_seconds"],
        "pairs_per_second": pairs / r["train_seconds"],
        "peak_rss_mb": r["peak_rss_mb"],
        "load_before": r["load_before"],
        "load_after": r["load_after"],
    }
    if "pad_shares" in r:  # alignloop's side reads them from its own log
        row["pad_share"] = r["pad_shares"].get("rm/pad_share")
    shutil.rmtree(out, ignore_errors=True)
    return row


def mean_se(values: list[float]) -> tuple[float, float | None]:
    """Mean and its standard error (sample std / sqrt(n); None for one value)."""
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else None)


def summarize(rows: list[dict], settings: list[str]) -> dict:
    """Per setting: mean accuracy over its runs (each fold and seed) with the standard
    error, the held-out pairs counted, the paired difference from the first setting on
    the runs both have (points), speed and padding."""
    by = {s: {(r["fold"], r["seed"]): r for r in rows if r["setting"] == s} for s in settings}
    base = settings[0]
    table = {}
    for s in settings:
        runs = by[s]
        if not runs:
            continue
        acc, se = mean_se([r["accuracy"] for r in runs.values()])
        entry = {
            "runs": len(runs),
            "accuracy": acc,
            "accuracy_se": se,
            "pairs_scored": sum(r["n_eval"] for r in runs.values()),
            "pairs_per_second": statistics.median(r["pairs_per_second"] for r in runs.values()),
        }
        shares = [r["pad_share"] for r in runs.values() if r.get("pad_share") is not None]
        if shares:
            entry["pad_share"] = statistics.fmean(shares)
        common = sorted(set(runs) & set(by[base]))
        if s != base and common:
            diff, dse = mean_se([100 * (runs[c]["accuracy"] - by[base][c]["accuracy"])
                                 for c in common])  # fmt: skip
            entry[f"minus_{base}_points"] = diff
            entry[f"minus_{base}_points_se"] = dse
            entry["paired_runs"] = len(common)
        table[s] = entry
    return table


def _fmt(x, digits=3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(result: dict) -> str:
    base = result["settings"][0]
    lines = [
        "# MiniLM reward model over folds and seeds",
        "",
        f"Run {result['date']} on {result['machine']}; command `{result['command']}`. "
        f"{result['folds']} folds of the {result['pairs']} shared HH pairs split by prompt, "
        f"seeds {result['seeds']}; lr 5e-5 linear, max length {result['max_length']}, one epoch, "
        f"{result['batch_size']} pairs a step, fp32, 2 threads.",
        "",
        f"| setting | runs | held-out accuracy (mean +- s.e.) | minus {base} (points, paired) "
        "| pairs/s (median) | padding share |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for s, e in result["table"].items():
        d = e.get(f"minus_{base}_points")
        diff = "" if d is None else f"{d:+.2f} +- {_fmt(e[f'minus_{base}_points_se'], 2)}"
        lines.append(
            f"| {s} | {e['runs']} | {e['accuracy']:.4f} +- {_fmt(e['accuracy_se'], 4)} | {diff} "
            f"| {e['pairs_per_second']:.2f} | {_fmt(e.get('pad_share'))} |"
        )
    lines += [
        "",
        "Standard errors: of the mean over the runs (each fold and seed), and of the mean "
        "paired difference. Padding share: alignloop's own log (padded positions of every "
        "training batch); TRL pads each random batch to its longest, as alignloop-g0 does; "
        "alignloop-pack-gN lays several texts in a row. "
        "Every run: `rm_folds.json` beside this file.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    if any(os.environ.get(k) != v for k, v in CHILD_ENV.items()):  # torch reads them at import
        args = sys.argv[1:] if argv is None else argv
        os.execve(sys.executable, [sys.executable, __file__, *args], {**os.environ, **CHILD_ENV})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--settings", default="trl,alignloop-g50,alignloop-g0,alignloop-pack-g0",
                        help="comma-separated; the first is the one the others are compared to")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--only-folds", type=int, nargs="+", default=None,
                        help="run these folds only (the summary still reads every kept run)")
    parser.add_argument("--force", action="store_true", help="rerun runs already kept")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 folds, 32 pairs each side, 64 tokens; results in "
                        "benchmarks/.work/trial")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="default bench/")
    args = parser.parse_args(argv)
    spec, limit, out = dict(SPEC), None, args.out or RESULTS
    if args.quick:
        spec.update(max_length=64, norm_samples=32)
        limit, out, args.folds = 32, args.out or WORK / "trial", 2
    settings = args.settings.split(",")
    for s in settings:
        if s != "trl":
            alignloop_options(s)  # a clear error before any run
    from run import machine

    folds = make_folds(args.folds, spec["max_length"], limit)
    kept = FOLDS / ("results-quick" if args.quick else "results")
    rows = []
    for seed in args.seeds:
        for i, fold in enumerate(folds):
            for s in settings:
                tag = f"folds-k{args.folds}-b{args.batch_size}-{s}-f{i}-s{seed}"
                path = kept / f"{tag}.json"
                if path.exists() and not args.force:
                    rows.append(json.loads(path.read_text()))
                    continue
                if args.only_folds is not None and i not in args.only_folds:
                    continue
                print(f"[folds] seed {seed} fold {i + 1}/{len(folds)}: {s}", flush=True)
                row = {"fold": i, **run_one(s, fold, seed, args.batch_size, spec, tag)}
                write_json(path, row)
                rows.append(row)
                print(f"    accuracy {row['accuracy']:.4f} on {row['n_eval']} pairs, "
                      f"{row['pairs_per_second']:.2f} pairs/s", flush=True)  # fmt: skip
    import datetime as dt

    m = machine()
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(["benchmarks/rm_folds.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": f"{m['cpu']}, {m['logical_cpus']} logical CPUs",
        "folds": args.folds,
        "pairs": sum(1 for line in DATA.open() if line.strip()),
        "seeds": args.seeds,
        "batch_size": args.batch_size,
        "quick": args.quick,
        "max_length": spec["max_length"],
        "settings": settings,
        "table": summarize(rows, settings),
        "runs": rows,
    }
    write_json(out / "rm_folds.json", result)
    (out / "rm_folds.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
