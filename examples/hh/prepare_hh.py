"""Anthropic HH-RLHF as the files the Qwen examples read (examples/qwen2.5-0.5b-hh/).

From the hub's train and test files (`chosen`/`rejected` dialogues; e.g.
`harmless-base/train.jsonl.gz` of Anthropic/hh-rlhf, unzipped), writes to --out:

- pairs-train.jsonl, pairs-test.jsonl: the comparisons (each dialogue split at its
  last "\\n\\nAssistant:", as `alignloop data import-hh` does): train-rm's data;
- sft.jsonl: one prompt record per training pair, the chosen final turn as its
  `reference` (SFT's target: "SFT on the preferred responses");
- prompts.jsonl: each distinct training prompt once (PPO's prompts, generate's);
- eval_prompts.jsonl: each distinct test prompt once (eval's held-out prompts).

    .venv/bin/python examples/hh/prepare_hh.py --train train.jsonl --test test.jsonl \\
        --out data/hh [--conversational]

By default the prompts stay HH's text ("\\n\\nHuman: ...\\n\\nAssistant:"), as TRL's
HH examples use them. `--conversational` writes every prompt as its turns instead
({"role": "user" | "assistant", "content"} messages, ending with the human's turn),
so an instruction-tuned model reads them through its own chat template and the
reward model scores the same rendered text. Rows the importer cannot split are
skipped and counted.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from alignloop.io import import_hh, write_records
from alignloop.schema import Comparison, Prompt

# "\n\nHuman: " / "\n\nAssistant: " open each turn of an HH dialogue.
TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")
ROLES = {"Human": "user", "Assistant": "assistant"}


def hh_turns(prompt: str) -> list[dict[str, str]]:
    """An HH prompt ("\\n\\nHuman: ...\\n\\nAssistant:") -> its messages, the final
    empty assistant turn (where the response goes) left out. Two turns in a row by
    the same side (3 of the 1,600 rows of ../shared's sample) become one message,
    joined by a blank line: some chat templates (Mistral's, Llama 2's) refuse
    roles that do not alternate."""
    parts = TURN.split(prompt)  # ["", "Human", text, "Assistant", text, ...]
    if parts[0].strip():
        raise ValueError(f"an HH prompt starts with a turn: {prompt[:60]!r}")
    turns = list(zip(parts[1::2], parts[2::2], strict=True))
    if turns and turns[-1][0] == "Assistant" and not turns[-1][1].strip():
        turns.pop()  # where the response goes
    messages: list[dict[str, str]] = []
    for who, text in turns:
        if messages and messages[-1]["role"] == ROLES[who]:
            joined = f"{messages[-1]['content']}\n\n{text.strip()}".strip()
            messages[-1] = {"role": ROLES[who], "content": joined}
        else:
            messages.append({"role": ROLES[who], "content": text.strip()})
    return messages


def prompt_records(pairs, prefix: str, form) -> list[Prompt]:
    """Each distinct prompt once, in file order, ids prefix-0, prefix-1, ..."""
    seen: dict[str, None] = dict.fromkeys(p.prompt for p in pairs)
    return [Prompt(id=f"{prefix}-{i}", prompt=form(text)) for i, text in enumerate(seen)]


def prepare(train: Path, test: Path, out: Path, *, conversational: bool = False) -> dict:
    """Write the five files; returns how many records each holds (and the skips)."""
    out.mkdir(parents=True, exist_ok=True)
    form = hh_turns if conversational else (lambda text: text)
    # a message's content carries no leading space; HH text keeps the importer's turns
    # (" Sure, ..."), so prompt + chosen is the original dialogue exactly
    turn = str.strip if conversational else (lambda text: text)
    counts: dict[str, int] = {}
    imported = {}
    for name, path in (("train", train), ("test", test)):
        result = import_hh(path)
        imported[name] = result.comparisons
        counts[f"skipped_{name}"] = len(result.skipped)
        pairs = [
            Comparison(prompt=form(p.prompt), chosen=turn(p.chosen),
                       rejected=turn(p.rejected), source=p.source)
            for p in result.comparisons
        ]  # fmt: skip
        counts[f"pairs-{name}"] = write_records(out / f"pairs-{name}.jsonl", pairs)
    sft = [
        Prompt(id=f"sft-{i}", prompt=form(p.prompt), reference=turn(p.chosen))
        for i, p in enumerate(imported["train"])
    ]
    counts["sft"] = write_records(out / "sft.jsonl", sft)
    train_prompts = prompt_records(imported["train"], "hh", form)
    counts["prompts"] = write_records(out / "prompts.jsonl", train_prompts)
    test_prompts = prompt_records(imported["test"], "hh-test", form)
    counts["eval_prompts"] = write_records(out / "eval_prompts.jsonl", test_prompts)
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=Path, required=True, help="HH-RLHF train .jsonl")
    parser.add_argument("--test", type=Path, required=True, help="HH-RLHF test .jsonl")
    parser.add_argument("--out", type=Path, default=Path("data/hh"), help="output folder")
    parser.add_argument(
        "--conversational", action="store_true", help="prompts as messages (chat templates)"
    )
    args = parser.parse_args(argv)
    for path in (args.train, args.test):
        if not path.exists():
            print(f"error: {path}: no such file", file=sys.stderr)
            return 2
    counts = prepare(args.train, args.test, args.out, conversational=args.conversational)
    for name, n in counts.items():
        print(f"{name}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
