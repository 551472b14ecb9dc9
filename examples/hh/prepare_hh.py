"""Anthropic HH-RLHF as the files the Qwen examples read (examples/qwen2.5-0.5b-hh/).

From the hub's train and test files (`chosen`/`rejected` dialogues; e.g.
`harmless-base/train.jsonl.gz` of Anthropic/hh-rlhf, unzipped), writes to --out:

- hh-train.jsonl, hh-test.jsonl: the files as they are (train-rm reads HH rows
  itself and splits each dialogue at its last "\\n\\nAssistant:");
- sft.jsonl: one prompt record per training pair, the chosen final turn as its
  `reference` (SFT's target: "SFT on the preferred responses");
- prompts.jsonl: each distinct training prompt once (PPO's prompts, generate's);
- eval_prompts.jsonl: each distinct test prompt once (eval's held-out prompts).

    .venv/bin/python examples/hh/prepare_hh.py --train train.jsonl --test test.jsonl \\
        --out data/hh

Prompts stay the HH text ("\\n\\nHuman: ...\\n\\nAssistant:"), as TRL's HH examples
use them; rows the importer cannot split are skipped and counted.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from alignloop.io import import_hh, write_records
from alignloop.schema import Prompt


def prompt_records(pairs, prefix: str) -> list[Prompt]:
    """Each distinct prompt once, in file order, ids prefix-0, prefix-1, ..."""
    seen: dict[str, None] = dict.fromkeys(p.prompt for p in pairs)
    return [Prompt(id=f"{prefix}-{i}", prompt=text) for i, text in enumerate(seen)]


def prepare(train: Path, test: Path, out: Path) -> dict[str, int]:
    """Write the five files; returns how many records each holds (and the skips)."""
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    imported = {}
    for name, path in (("train", train), ("test", test)):
        result = import_hh(path)
        imported[name] = result.comparisons
        counts[f"skipped_{name}"] = len(result.skipped)
        if path.resolve() != (out / f"hh-{name}.jsonl").resolve():
            shutil.copyfile(path, out / f"hh-{name}.jsonl")
    sft = [
        Prompt(id=f"sft-{i}", prompt=p.prompt, reference=p.chosen.strip())
        for i, p in enumerate(imported["train"])
    ]
    counts["sft"] = write_records(out / "sft.jsonl", sft)
    train_prompts = prompt_records(imported["train"], "hh")
    counts["prompts"] = write_records(out / "prompts.jsonl", train_prompts)
    counts["eval_prompts"] = write_records(
        out / "eval_prompts.jsonl", prompt_records(imported["test"], "hh-test")
    )
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="HH-RLHF train .jsonl")
    parser.add_argument("--test", type=Path, required=True, help="HH-RLHF test .jsonl")
    parser.add_argument("--out", type=Path, default=Path("data/hh"), help="output folder")
    args = parser.parse_args(argv)
    for path in (args.train, args.test):
        if not path.exists():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    for name, n in prepare(args.train, args.test, args.out).items():
        print(f"{name}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
