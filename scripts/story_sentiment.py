"""Happier stories: the classic first RLHF run on a real pretrained model.

TRL's old "positive IMDB reviews" notebook tuned GPT-2 to continue movie reviews
positively, a sentiment classifier giving the reward. Here the model is the
pretrained TinyStories Llama of ../shared/models/stories260k (260K parameters, a
SentencePiece BPE tokenizer with BOS and no pad token) and the scorer VADER
(`examples/sentiment.py`, the `vaderSentiment` package): every step is an ordinary
`alignloop` command, run in this process (`alignloop.cli.main`), timed, and written
with its figures to OUT/figures.json.

1. openings: the model's own sampled stories from BOS, each cut after its first
   sentence and 2-4 words of the next ("Once upon a time, there was a girl named
   Amy. She loved to"), duplicates dropped, split into train and held-out prompts;
2. direct reward, per seed: `alignloop train-ppo --reward-fn
   examples/sentiment.py:reward` from the story model with a KL penalty to it, then
   `alignloop eval --judge examples/sentiment.py:judge --reference <story model>` on
   the held-out openings: sentiment of the tuned and the start model (mean over
   held-out prompts of the mean of K samples, with its standard error over prompts),
   their paired difference, the KL to the start model;
3. learned reward: `alignloop generate` K=4 stories per training opening from the
   start model, a scripted labeler ranks them happiest first by VADER
   (`sentiment.rank`), `alignloop feedback pairs`, `alignloop train-rm` with the
   story model itself as the backbone, `alignloop train-ppo --reward-model`, and the
   same evaluation.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/story_sentiment.py [--seeds 0 1 2]
        [--out runs/story-sentiment] [--steps 40] [--no-learned] [--tiny]

`--tiny` is the test's size (a few prompts and steps; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import random
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO.parent / "shared" / "models" / "stories260k"
SENTIMENT = REPO / "examples" / "sentiment.py"


@dataclass
class Size:
    """How big a run is; `--tiny` for the tests."""

    n_train: int = 240  # training openings
    n_heldout: int = 60  # held-out openings
    steps: int = 40  # PPO steps (rollout + update)
    batch_size: int = 32  # prompts per PPO rollout
    max_new_tokens: int = 32  # tokens of each continuation
    eval_k: int = 4  # samples per held-out opening and policy
    rm_k: int = 4  # stories per opening the scripted labeler ranks
    rm_epochs: int = 2
    rm_steps: int | None = None  # None: rm_epochs over the pairs
    learned_steps: int = 40  # PPO steps against the learned reward
    lr: float = 3e-5  # PPO's policy learning rate
    kl_coef: float = 0.1  # beta of the KL penalty to the start model


TINY = Size(
    n_train=12, n_heldout=4, steps=2, batch_size=4, max_new_tokens=8, eval_k=2,
    rm_k=3, rm_epochs=1, rm_steps=2, learned_steps=1,
)  # fmt: skip


def _sentiment():
    """examples/sentiment.py as a module (it is not part of the package)."""
    from alignloop.config import load_callable

    return load_callable(f"{SENTIMENT}:rank", "sentiment").__globals__


def run(argv: list[str], log: list[dict]) -> float:
    """One `alignloop` command in this process; its command line and seconds go to
    `log`. A failure stops the script with the command's own message."""
    from alignloop.cli import main

    line = "alignloop " + shlex.join(str(a) for a in argv)
    print(f"\n$ {line}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    code = main([str(a) for a in argv])
    seconds = time.perf_counter() - start
    if code:
        raise SystemExit(f"failed ({code}): {line}")
    log.append({"command": line, "seconds": round(seconds, 2)})
    return seconds


def make_openings(model: Path, out: Path, size: Size, seed: int = 0) -> dict[str, int]:
    """Story openings from the model's own samples -> out/prompts_{train,heldout}.jsonl."""
    import torch

    from alignloop.generate import sample
    from alignloop.io import write_records
    from alignloop.models import load_policy
    from alignloop.schema import Prompt

    policy, tokenizer = load_policy(model)
    policy.eval()
    torch.manual_seed(seed)
    rng = random.Random(seed)
    want = size.n_train + size.n_heldout
    openings: list[str] = []
    seen: set[str] = set()
    for _ in range(20):  # batches of stories until there are enough distinct openings
        stories = sample(policy, tokenizer, [[tokenizer.bos_token_id]] * 128, max_new_tokens=48)
        for story in stories.completions:
            first, dot, rest = story.partition(". ")
            words = rest.split()
            if not dot or len(words) < 5 or not 4 <= len(first.split()) <= 20:
                continue
            opening = f"{first}. {' '.join(words[: rng.randint(2, 4)])}"
            if opening not in seen:
                seen.add(opening)
                openings.append(opening)
        if len(openings) >= want:
            break
    if len(openings) < want:
        raise SystemExit(f"only {len(openings)} distinct openings for {want}")
    records = [Prompt(id=f"s{i:03d}", prompt=text) for i, text in enumerate(openings[:want])]
    write_records(out / "prompts_train.jsonl", records[: size.n_train])
    write_records(out / "prompts_heldout.jsonl", records[size.n_train :])
    return {"train": size.n_train, "heldout": size.n_heldout}


def mean_se(values: list[float]) -> dict[str, float]:
    """Mean and its standard error (sample std / sqrt(n))."""
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else float("nan")
    return {"mean": round(mean, 4), "se": round(math.sqrt(var / n), 4), "n": n}


def sentiment_figures(eval_dir: Path) -> dict:
    """From eval's scores.jsonl: per policy the sentiment over held-out prompts (each
    prompt's mean over its samples), the paired difference policy - reference, and
    from eval.json the KL of the policy to the reference."""
    by: dict[str, dict[str, list[float]]] = {}
    for line in (eval_dir / "scores.jsonl").read_text().splitlines():
        row = json.loads(line)
        by.setdefault(row["policy"], {}).setdefault(row["prompt_id"], []).append(row["sentiment"])
    per_prompt = {name: {p: sum(v) / len(v) for p, v in rows.items()} for name, rows in by.items()}
    tuned, start = per_prompt["tuned"], per_prompt["start"]
    summary = json.loads((eval_dir / "eval.json").read_text())["policies"]["tuned"]
    return {
        "sentiment_start": mean_se(list(start.values())),
        "sentiment_tuned": mean_se(list(tuned.values())),
        "difference": mean_se([tuned[p] - start[p] for p in tuned]),
        "kl_mean": round(summary["kl_mean"], 4),
    }


def over_seeds(runs: list[dict]) -> dict:
    """Across PPO seeds: the mean and standard error of each seed's tuned sentiment,
    difference and KL (the spread of the training run, not of the prompts)."""
    if len(runs) < 2:
        return {}
    keys = ("sentiment_tuned", "difference")
    figures = {k: mean_se([r[k]["mean"] for r in runs]) for k in keys}
    return {**figures, "kl_mean": mean_se([r["kl_mean"] for r in runs])}


def samples(eval_dir: Path, n: int = 3) -> list[dict]:
    """The first sample of the first `n` held-out openings, start and tuned."""
    from alignloop.io import read_records

    prompts = {p.id: p.prompt for p in read_records(eval_dir.parent / "prompts_heldout.jsonl",
                                                    "prompt")}  # fmt: skip
    shown = []
    for name in ("start", "tuned"):
        for c in read_records(eval_dir / f"completions_{_file(name)}.jsonl", "completion"):
            if c.id.endswith("-0") and len(shown) < 2 * n:
                shown.append({"policy": name, "prompt": prompts[c.prompt_id],
                              "completion": c.completion})  # fmt: skip
            if sum(s["policy"] == name for s in shown) == n:
                break
    return shown


def _file(name: str) -> str:
    return {"tuned": "policy", "start": "reference"}[name]


def ppo_args(policy: Path, prompts: Path, out: Path, size: Size, steps: int, seed: int) -> list:
    """train-ppo's options of both runs (the reward comes after)."""
    return [
        "train-ppo", "--policy", policy, "--prompts", prompts,
        "--out", out, "--max-steps", steps, "--batch-size", size.batch_size,
        "--minibatch-size", max(1, size.batch_size // 4), "--max-new-tokens",
        size.max_new_tokens, "--temperature", 1.0, "--lr", size.lr, "--kl-coef", size.kl_coef,
        "--missing-eos-score", "none", "--seed", seed, "--sample-every", 0,
        "--save-every", 0,
    ]  # fmt: skip


def eval_args(policy: Path, model: Path, prompts: Path, out: Path, size: Size, extra=()) -> list:
    """eval's options of both runs: the tuned policy and the start model on the
    held-out openings, K samples each from one seed, VADER as the judge."""
    return [
        "eval", "--policy", policy, "--reference", model, "--prompts", prompts, "--out", out,
        "--judge", f"{SENTIMENT}:judge",
        "--judge-name", "sentiment", "--policy-name", "tuned", "--reference-name", "start",
        "--k", size.eval_k, "--temperature", 1.0, "--max-new-tokens", size.max_new_tokens,
        "--seed", 0, "--no-report", "--device", "cpu", *extra,
    ]  # fmt: skip


def direct_reward(model: Path, out: Path, size: Size, seed: int, log: list) -> dict:
    """PPO with VADER as --reward-fn, then the held-out evaluation."""
    run_dir = out / f"ppo-seed{seed}"
    seconds = run([*ppo_args(model, out / "prompts_train.jsonl", run_dir, size, size.steps, seed),
                   "--reward-fn", f"{SENTIMENT}:reward"], log)  # fmt: skip
    run(
        eval_args(run_dir, model, out / "prompts_heldout.jsonl", out / f"eval-seed{seed}", size),
        log,
    )
    figures = sentiment_figures(out / f"eval-seed{seed}")
    return {"seed": seed, "ppo_seconds": round(seconds, 1), **figures}


def scripted_rankings(prompts_path: Path, completions_path: Path, out: Path) -> int:
    """The scripted labeler: each prompt's completions ranked happiest first."""
    from alignloop.io import read_records, write_records

    rank = _sentiment()["rank"]
    by_prompt: dict[str, list] = {}
    for c in read_records(completions_path, "completion"):
        by_prompt.setdefault(c.prompt_id, []).append(c)
    prompts = [p.id for p in read_records(prompts_path, "prompt")]
    return write_records(out, [rank(p, by_prompt[p]) for p in prompts if p in by_prompt])


def learned_reward(model: Path, out: Path, size: Size, log: list) -> dict:
    """Rankings by the scripted labeler -> pairs -> reward model -> PPO -> eval."""
    d = out / "learned"
    d.mkdir(parents=True, exist_ok=True)
    train = out / "prompts_train.jsonl"
    run(["generate", "--policy", model, "--prompts", train, "--out", d / "candidates.jsonl",
         "--k", size.rm_k, "--temperature", 1.0, "--max-new-tokens", size.max_new_tokens,
         "--seed", 0, "--name", "start"], log)  # fmt: skip
    scripted_rankings(train, d / "candidates.jsonl", d / "rankings.jsonl")
    run(["feedback", "pairs", "--rankings", d / "rankings.jsonl", "--completions",
         d / "candidates.jsonl", "--prompts", train, "--out", d / "pairs.jsonl"], log)  # fmt: skip
    rm_steps = [] if size.rm_steps is None else ["--max-steps", size.rm_steps]
    run(["train-rm", "--model", model, "--data", d / "pairs.jsonl", "--out", d / "rm",
         "--epochs", size.rm_epochs, "--lr", 1e-3, "--batch-size", 8, "--seed", 0,
         "--norm-samples", 256, "--save-every", 0, "--eval-every", 0, *rm_steps], log)  # fmt: skip
    rm_eval = [json.loads(line) for line in (d / "rm" / "metrics.jsonl").read_text().splitlines()]
    rm_eval = [m for m in rm_eval if any(k.startswith("eval/") for k in m)][-1]
    ppo_dir = d / "ppo"
    seconds = run([*ppo_args(model, train, ppo_dir, size, size.learned_steps, 0),
                   "--reward-model", d / "rm"], log)  # fmt: skip
    heldout = out / "prompts_heldout.jsonl"
    run(eval_args(ppo_dir, model, heldout, d / "eval", size, ["--reward-model", d / "rm"]), log)
    figures = sentiment_figures(d / "eval")
    n_pairs = sum(1 for _ in (d / "pairs.jsonl").open())
    return {
        "pairs": n_pairs,
        "rm_heldout": {k: v for k, v in rm_eval.items() if k.startswith("eval/")},
        "ppo_seconds": round(seconds, 1),
        **figures,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL, help="the story model")
    parser.add_argument("--out", type=Path, default=Path("runs/story-sentiment"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="PPO seeds")
    parser.add_argument("--steps", type=int, default=None, help="PPO steps (default: 40)")
    parser.add_argument("--lr", type=float, default=None, help="PPO's lr (default: 3e-5)")
    parser.add_argument("--kl-coef", type=float, default=None, help="KL beta (default: 0.1)")
    parser.add_argument("--no-learned", action="store_true", help="skip the learned reward")
    parser.add_argument("--tiny", action="store_true", help="the tests' size")
    args = parser.parse_args(argv)
    if not args.model.exists():
        print(f"error: {args.model}: no such model (it lives in ../shared)", file=sys.stderr)
        return 2
    size = TINY if args.tiny else Size()
    if args.steps is not None:
        size = replace(size, steps=args.steps, learned_steps=args.steps)
    size = replace(size, lr=args.lr or size.lr, kl_coef=args.kl_coef or size.kl_coef)
    args.out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []
    start = time.perf_counter()
    figures: dict = {
        "model": str(args.model),
        "size": asdict(size),
        "machine": _machine(),
        "openings": make_openings(args.model, args.out, size),
        "direct": [direct_reward(args.model, args.out, size, s, log) for s in args.seeds],
    }
    figures["over_seeds"] = over_seeds(figures["direct"])
    figures["samples"] = samples(args.out / f"eval-seed{args.seeds[0]}")
    if not args.no_learned:
        figures["learned"] = learned_reward(args.model, args.out, size, log)
    figures["commands"] = log
    figures["seconds"] = round(time.perf_counter() - start, 1)
    (args.out / "figures.json").write_text(json.dumps(figures, indent=2) + "\n")
    print(json.dumps({k: figures[k] for k in ("direct", "seconds")}, indent=2))
    if "learned" in figures:
        print(json.dumps(figures["learned"], indent=2))
    return 0


def _machine() -> dict:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


if __name__ == "__main__":
    sys.exit(main())
