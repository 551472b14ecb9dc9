"""One round of the loop on the built-in summarization world, stage by stage.

This is what `alignloop demo` runs. Every stage reads and writes files in the run
directory in the schema's formats, so any stage can be rerun alone, replaced by
another tool, or inspected:

    world/          prompts_train.jsonl, prompts_eval.jsonl, tokenizer/, policy-init/
    completions.jsonl   K completions per prompt
    rankings.jsonl      simulated labelers' rankings (several labelers per prompt)
    agreement.json      how much the labelers agree
    pairs.jsonl         rankings turned into preference pairs
    consensus.jsonl     one consensus ranking per prompt
    metrics.json        the figures of the run

Stages still to come (issues 3-5) are the supervised policy, the reward model, PPO
and the evaluation; until the supervised policy exists, completions come from the
world's stand-in sampler (perturbed references), which is said in the output.
"""

from __future__ import annotations

import contextlib
import random
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from alignloop.io import write_json, write_records
from alignloop.schema import Completion, Prompt

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and seed of a demo run; `quick` shrinks everything for tests."""

    out: Path = Path("runs/demo")
    seed: int = 0
    quick: bool = False
    n_train: int = 2000  # training documents of the world
    n_eval: int = 200  # held-out documents, never trained on
    n_label: int = 600  # prompts whose completions the labelers rank
    k: int = 4  # completions per prompt
    labelers: int = 5  # size of the simulated labeler pool
    overlap: int = 3  # distinct labelers per prompt

    def sized(self) -> DemoConfig:
        """The effective configuration (`quick` divides the data sizes)."""
        if not self.quick:
            return self
        return DemoConfig(
            out=self.out, seed=self.seed, quick=True, n_train=200, n_eval=40, n_label=60,
            k=self.k, labelers=self.labelers, overlap=self.overlap,
        )  # fmt: skip


@contextlib.contextmanager
def stage(name: str) -> Iterator[dict]:
    """Show a spinner while a stage runs, then one summary line with its time.
    The caller fills the yielded dict's "summary"."""
    info: dict = {"summary": ""}
    start = time.perf_counter()
    with console.status(f"[bold]{name}[/bold] ..."):
        yield info
    seconds = time.perf_counter() - start
    info["seconds"] = round(seconds, 2)
    console.print(f"[green]done[/green] [bold]{name}[/bold]: {info['summary']} ({seconds:.1f}s)")


def build_world(
    out: str | Path, *, seed: int, n_train: int, n_eval: int, with_policy: bool = True
) -> dict[str, Path]:
    """Write the world's train and held-out prompts, its tokenizer and (optionally)
    a tiny randomly initialised policy, each as an ordinary file or HF directory."""
    from alignloop.world import build_tokenizer, make_prompts

    out = Path(out)
    paths = {
        "prompts_train": out / "prompts_train.jsonl",
        "prompts_eval": out / "prompts_eval.jsonl",
        "tokenizer": out / "tokenizer",
    }
    # Distinct seeds keep held-out documents apart from the training ones.
    write_records(paths["prompts_train"], make_prompts(n_train, seed, id_prefix="train"))
    write_records(paths["prompts_eval"], make_prompts(n_eval, seed + 1_000_003, id_prefix="eval"))
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(paths["tokenizer"])
    if with_policy:
        from alignloop.models import build_tiny_causal_lm

        paths["policy_init"] = out / "policy-init"
        model = build_tiny_causal_lm(tokenizer, seed=seed)
        model.save_pretrained(paths["policy_init"])
        tokenizer.save_pretrained(paths["policy_init"])
    return paths


def stand_in_completions(prompts: Sequence[Prompt], *, k: int, seed: int) -> list[Completion]:
    """K completions per prompt from the world's stand-in sampler (no model): varied,
    imperfect summaries. Each prompt gets its own seeded generator, so a prompt's
    completions do not depend on which other prompts are in the file."""
    from alignloop.world import candidate_summaries

    completions = []
    for p in prompts:
        rng = random.Random(zlib.crc32(f"{seed}:{p.id}".encode()))
        for j, text in enumerate(candidate_summaries(p, k, rng)):
            completions.append(
                Completion(id=f"{p.id}-c{j}", prompt_id=p.id, completion=text, policy="stand-in")
            )
    return completions


def _labeler_table(report: dict):
    """Each labeler's agreement with the consensus of the others, as a rich table."""
    from rich.table import Table

    table = Table(title="agreement with the other labelers' consensus")
    for column in ("labeler", "rankings", "pairs", "agreement"):
        table.add_column(column, justify="left" if column == "labeler" else "right")
    for name, row in report["labelers"].items():
        agreement = row["agreement_with_consensus"]
        shown = "-" if agreement is None else f"{agreement:.3f}"
        table.add_row(name, str(row["rankings"]), str(row["pairs"]), shown)
    return table


def run_demo(config: DemoConfig) -> dict:
    """Run every stage that exists on the built-in world; returns the metrics that
    are also written to `metrics.json`."""
    from transformers.utils import logging as hf_logging

    from alignloop.feedback import agreement_report, consensus, rankings_to_pairs
    from alignloop.io import read_records
    from alignloop.world import default_labelers, simulate_rankings

    hf_logging.disable_progress_bar()  # the stages show their own progress
    cfg = config.sized()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    metrics: dict = {"config": {k: str(v) for k, v in asdict(cfg).items()}}

    with stage("world") as s:
        paths = build_world(out / "world", seed=cfg.seed, n_train=cfg.n_train, n_eval=cfg.n_eval)
        prompts = read_records(paths["prompts_train"], Prompt)
        s["summary"] = f"{cfg.n_train} training and {cfg.n_eval} held-out documents"

    with stage("generate") as s:
        to_label = prompts[: cfg.n_label]
        completions = stand_in_completions(to_label, k=cfg.k, seed=cfg.seed)
        write_records(out / "completions.jsonl", completions)
        s["summary"] = (
            f"{len(completions)} completions ({cfg.k} per prompt) from the stand-in sampler"
        )

    with stage("label") as s:
        labelers = default_labelers(cfg.labelers)
        rankings = simulate_rankings(
            to_label, completions, labelers, overlap=cfg.overlap, seed=cfg.seed
        )
        write_records(out / "rankings.jsonl", rankings)
        report = agreement_report(rankings)
        write_json(out / "agreement.json", report)
        console.print(_labeler_table(report))
        s["summary"] = (
            f"{len(rankings)} rankings by {len(labelers)} labelers, {cfg.overlap} per prompt; "
            f"pairwise agreement {report['pairwise_agreement']:.3f}, "
            f"Kendall's W {report['kendall_w']:.3f}, "
            f"Krippendorff's alpha {report['krippendorff_alpha']:.3f}"
        )

    with stage("pairs") as s:
        result = rankings_to_pairs(rankings, completions, to_label)
        write_records(out / "pairs.jsonl", result.pairs)
        write_records(out / "consensus.jsonl", consensus(rankings))
        s["summary"] = f"{len(result.pairs)} preference pairs"

    metrics.update(
        labeler_pairwise_agreement=report["pairwise_agreement"],
        labeler_kendall_w=report["kendall_w"],
        labeler_krippendorff_alpha=report["krippendorff_alpha"],
        n_rankings=len(rankings),
        n_pairs=len(result.pairs),
        demo_seconds=round(time.perf_counter() - started, 2),
    )
    write_json(out / "metrics.json", metrics)
    console.print(f"run directory: {out}")
    return metrics
