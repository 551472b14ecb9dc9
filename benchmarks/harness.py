"""What every side of every workload shares: standard library only, so the same file
is imported by alignloop's environment (.venv) and by the peers' (benchmarks/.venv-trl*).

- `child_main`: the entry point of one side of one workload, run in its own process:
  reads the spec (JSON), pins threads, runs the workload and writes its result (JSON)
  with the peak resident memory and the phase timings.
- `Phases`: wall-clock time of named phases (load, train, evaluate, save).
- `PATHS`: where the prepared models and data live (benchmarks/.work, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
WORK = BENCH / ".work"  # prepared tokenizer, models, data and every run's output
DATA = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"  # never copied into the repo
RESULTS = REPO / "bench"  # committed outputs: results.json, results.md, profiles/

PATHS = {
    "tokenizer": WORK / "tokenizer",
    "policy_init": WORK / "models" / "policy-init",  # tiny Llama causal LM, random (seed 0)
    "policy": WORK / "models" / "policy",  # policy_init after a short SFT on HH (alignloop)
    "rm_init": WORK / "models" / "rm-init",  # the same Llama with a 1-output score head
    "minilm_init": WORK / "models" / "minilm-init",  # all-MiniLM-L6-v2 + a seeded 1-output head
    "rm_trained": WORK / "models" / "rm-trained",  # PPO/RLOO's reward and value model start
    "rm_train": WORK / "data" / "rm_train.jsonl",  # comparisons (prompt, chosen, rejected)
    "rm_eval": WORK / "data" / "rm_eval.jsonl",
    "prompts_train": WORK / "data" / "prompts_train.jsonl",  # PPO/RLOO prompts, <= 64 tokens
    "prompts_eval": WORK / "data" / "prompts_eval.jsonl",
    "sft_prompts": WORK / "data" / "sft_prompts.jsonl",  # HH prompt + chosen turn (reference)
    "manifest": WORK / "manifest.json",
}

# The thread count of the issue: both sides get the same two.
THREADS = 2
CHILD_ENV = {
    "OMP_NUM_THREADS": str(THREADS),
    # Threads that wait sleep instead of spinning: on a shared machine the spinning
    # thread takes the core its partner needs, and small ops slow down 3-5x (measured
    # here under load; both sides run with it).
    "OMP_WAIT_POLICY": "PASSIVE",
    "MKL_NUM_THREADS": str(THREADS),
    "TOKENIZERS_PARALLELISM": "false",
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "WANDB_DISABLED": "true",
    "WANDB_MODE": "disabled",
    "PYTHONHASHSEED": "0",
    "PYTHONUNBUFFERED": "1",
}


def peak_rss_mb() -> float:
    """This process's peak resident set size so far, in MiB: VmHWM of its own address
    space. (getrusage's ru_maxrss would not do: Linux carries it across fork and exec,
    so a child would report at least its parent's size.)"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Phases:
    """Wall-clock seconds of named phases, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(self.seconds.get(name, 0.0) + time.perf_counter() - start, 3)


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_json(path: Path, obj) -> None:
    """Atomic: a temporary file renamed into place (the repo's rule, without its import)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def pin_threads() -> None:
    import torch

    torch.set_num_threads(THREADS)


def versions(*names: str) -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": sys.version.split()[0]}
    for name in names:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    return found


def child_main(runs: dict) -> None:
    """`runs[workload](spec: dict, phases: Phases) -> dict` is one side of one
    workload; this wraps it: WORKLOAD --spec FILE --out FILE, threads pinned, errors
    written to the result (and exit code 1)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("workload", choices=sorted(runs))
    parser.add_argument("--spec", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    spec = json.loads(args.spec.read_text())
    pin_threads()
    phases = Phases()
    result: dict = {"ok": False}
    try:
        metrics = runs[args.workload](spec, phases)
        result = {"ok": True, **metrics}
    except Exception:  # the parent reports it with the side's name; exit code 1
        result["error"] = traceback.format_exc()
        print(result["error"], file=sys.stderr)
    result["phases"] = phases.seconds
    result["peak_rss_mb_self"] = round(peak_rss_mb(), 1)
    write_json(args.out, result)
    sys.exit(0 if result["ok"] else 1)
