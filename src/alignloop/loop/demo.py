"""One round of the loop on the built-in summarization world, stage by stage.

This is what `alignloop demo` runs. Every stage reads and writes files in the run
directory in the schema's formats (or Hugging Face model directories), so any stage
can be rerun alone with its own command, replaced by another tool, or inspected:

    world/              prompts_train.jsonl, prompts_eval.jsonl, tokenizer/, policy-init/
    sft/                the supervised policy (train-sft on the references)
    completions.jsonl   K sampled completions per labelled prompt (generate)
    rankings.jsonl      simulated labelers' rankings, several labelers per prompt
    agreement.json      how much the labelers agree
    pairs.jsonl         every labeler's rankings turned into preference pairs
    consensus.jsonl     one Bradley-Terry consensus ranking per prompt
    rm_pairs.jsonl      the consensus as pairs: what the reward model trains on
    rm/                 the reward model (train-rm), started from the SFT policy
    ppo/                the tuned policy (train-ppo), metrics.jsonl, rollouts.jsonl
    eval/               held-out completions of every policy and their scores
    metrics.json        the figures of the run; report.html, the same as pictures

The held-out documents are never trained on, and the gold judge that scores them is
seen by nobody but the simulated labelers (through their noise and taste).

`run_demo` runs `STAGES` in order, numbered as they run (1. world ... 9. report):
one function per stage, each reading and setting fields of one `DemoRun`.

With `--rounds 2` or more it runs `ROUND_STAGES` instead: world, SFT, then the rounds
of `loop/rounds.py` (`loop_config` turns this config into a `LoopConfig`: the SFT
policy, the simulated labelers, the gold judge, `n_label` documents split across the
rounds by `label_split`, so the label budget is the one-round demo's), the last
round's evaluation and the report; the rounds' files are in round-N/ (see rounds.py).
metrics.json holds the same keys either way (the final policy's figures) and
`rounds`, each round's `ROUND_KEYS`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import random
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

from rich.console import Console

from alignloop.config import option
from alignloop.io import read_records, write_json, write_records
from alignloop.schema import Comparison, Completion, Prompt, Ranking

if TYPE_CHECKING:
    from alignloop.evaluate import Evaluation
    from alignloop.models import RewardModel

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes, seed and hyperparameters of a demo run; `quick` shrinks it for tests.

    The defaults are what the README's figures come from (2 CPU cores, under 10
    minutes). Sampling is at temperature 1 everywhere: the labelled completions,
    PPO's rollouts and the evaluation sample from the policies' own distributions.
    The fields declared with `option` are `alignloop demo`'s flags."""

    out: Path = option(Path("runs/demo"), "run directory")
    seed: int = option(0, "seed of every stage")
    quick: bool = option(False, "a small run for tests (about a minute)")
    # the rounds (`loop/rounds.py`); one round is today's single pass, stage by stage
    rounds: int = option(
        1, "rounds of the loop; the labelled documents (the label budget) are split "
        "across them", at_least=1
    )  # fmt: skip
    label_split: list[float] = option(
        [], "share of the labelled documents each round labels, one per round (default: "
        "equal shares)"
    )  # fmt: skip
    reference: Literal["sft", "previous"] = option(
        "sft", "reference of PPO's KL penalty from round 2 on: the SFT policy or the last round's"
    )
    rm_init: Literal["previous", "scratch"] = option(
        "previous", "each round's reward model starts from the last round's or from the SFT policy"
    )
    ppo_init: Literal["previous", "start"] = option(
        "previous", "each round's PPO starts from the last round's policy or from the SFT policy"
    )
    ppo_steps: int = option(100, "PPO steps of each round", at_least=1)
    rm_ensemble: int = option(
        1, "reward models trained on the same pairs with different seeds; PPO maximizes "
        "their mean score minus --rm-ensemble-penalty times their spread (one round only)",
        at_least=1,
    )  # fmt: skip
    rm_ensemble_penalty: float = option(
        0.0, "with --rm-ensemble: train-ppo's --reward-ensemble-penalty", at_least=0.0
    )
    personal: bool = option(
        False, "the personal demo instead (loop/personal.py): a panel of strong tastes, "
        "personal reward models, a new user from 20 comparisons, a LoRA policy per "
        "labeler, two criteria and the safety gate (about 20 minutes on 2 CPU cores)"
    )  # fmt: skip
    # data
    n_train: int = 2000  # training documents: SFT targets and PPO prompts
    n_eval: int = 200  # held-out documents, never trained on
    n_label: int = 2000  # training documents whose completions the labelers rank
    k: int = 4  # completions per labelled prompt
    labelers: int = 5  # size of the simulated labeler pool
    overlap: int = 3  # distinct labelers per prompt
    max_new_tokens: int = 40  # longest completion (summaries are about 13 tokens)
    temperature: float = 1.0
    # supervised fine-tuning of the tiny policy, from scratch
    sft_epochs: int = 10
    sft_lr: float = 2e-3
    # reward model, started from the SFT policy, trained on the consensus pairs
    rm_epochs: int = 3
    rm_lr: float = 3e-4
    rm_held_out: float = 0.1  # share of the labelled prompts held out to test it
    # batches sorted by length over windows of 50: what every figure of the README's
    # demo was measured with (train-rm's default is now off for packed batches, as the
    # demo's are; issue 17: not yet measured on the demo)
    rm_group_by_length: int = 50
    # PPO
    ppo_batch: int = 32  # prompts per rollout
    ppo_lr: float = 1e-4
    kl_coef: float = option(0.1, "beta of PPO's KL penalty to the SFT policy")
    reward_target: float | None = None  # stop early once the reward reaches this
    # evaluation
    eval_k: int = 4  # samples per held-out document and policy
    # the personal demo (`personal`)
    personal_features: int = 16  # D: reward features of the personal reward model
    personal_lora_r: int = 8  # rank of each labeler's LoRA adapter
    personal_lr: float = 1e-3  # PPO's learning rate for the adapters
    new_user_comparisons: int = 20  # comparisons the new user's weights are fit from
    new_user_draws: int = 50  # random draws of those comparisons the accuracy averages
    safety_threshold: float = 0.0  # the safety gate's, on the harmlessness head
    # the one policy conditioned on the strong-taste labelers reads each as one of these
    # words (the world's tokenizer knows them; an unknown name would be <unk> for all)
    conditioning_keys: tuple[str, ...] = ("anna", "ben")
    # the demo's tiny models gain little from more threads, and on a busy CPU
    # multi-threaded torch slows down many times over
    threads: int | None = option(1, "torch CPU threads (none: torch's own default)")

    def sized(self) -> DemoConfig:
        """The effective configuration (`quick` shrinks the data and the steps)."""
        if not self.quick:
            return self
        return dataclasses.replace(
            self, n_train=300, n_eval=40, n_label=300, sft_epochs=8, rm_epochs=2,
            ppo_steps=12, ppo_batch=16, eval_k=4,
        )  # fmt: skip


@contextlib.contextmanager
def stage(name: str, *, spinner: bool = True) -> Iterator[dict]:
    """Run a stage: a spinner while it runs (stages with their own progress bars
    pass spinner=False), then one summary line with its time. The caller fills the
    yielded dict's "summary"."""
    info: dict = {"summary": ""}
    start = time.perf_counter()
    console.rule(f"[bold]{name}")
    if spinner:
        with console.status(f"[bold]{name}[/bold] ..."):
            yield info
    else:
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


# --- helpers of the stages -----------------------------------------------------------


def split_ids(ids: Sequence[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """A seeded split of prompt ids into (kept, held out); at least one held out."""
    order = sorted(ids)
    random.Random(seed).shuffle(order)
    n_held = max(1, round(fraction * len(order)))
    return set(order[n_held:]), set(order[:n_held])


def gold_pairs(prompts: Sequence[Prompt], completions: Sequence[Completion]) -> list[Comparison]:
    """Every pair of a prompt's completions that the gold judge does not tie, the
    better one chosen: the judge's own labels, to test a reward model against. Pairs
    with an empty completion are left out, as `rankings_to_pairs` leaves them out of
    the labelers' pairs (a comparison needs two texts)."""
    from alignloop.world import judge_prefers

    by_prompt: dict[str, list[Completion]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    pairs = []
    for p in prompts:
        cs = by_prompt.get(p.id, [])
        for i, a in enumerate(cs):
            for b in cs[i + 1 :]:
                if not a.completion.strip() or not b.completion.strip():
                    continue
                verdict = judge_prefers(p, a.completion, b.completion)
                if verdict == 0:
                    continue
                chosen, rejected = (a, b) if verdict > 0 else (b, a)
                pairs.append(Comparison(
                    prompt=p.prompt, chosen=chosen.completion, rejected=rejected.completion,
                    prompt_id=p.id, chosen_id=chosen.id, rejected_id=rejected.id,
                    labeler="gold", source="gold judge",
                ))  # fmt: skip
    return pairs


def pair_accuracy(scores: dict[str, float], pairs: Sequence[Comparison]) -> float | None:
    """Share of pairs whose chosen completion scores strictly higher (ids as keys)."""
    if not pairs:
        return None
    right = sum(scores[p.chosen_id] > scores[p.rejected_id] for p in pairs)  # type: ignore[index]
    return right / len(pairs)


def overoptimization(
    rollouts: Sequence[dict], prompts: Sequence[Prompt], *, windows: int = 10
) -> list[dict]:
    """Gold reward against proxy reward as PPO moves away from the start: the
    rollouts of each stretch of steps, their mean KL to the reference, mean score
    (the reward model's, the proxy) and mean gold utility (Gao et al. 2022)."""
    from alignloop.world import gold_utility

    by_text = {p.prompt: p for p in prompts}
    steps = sorted({r["step"] for r in rollouts})
    if not steps:
        return []
    size = max(1, -(-len(steps) // windows))
    points = []
    for start in range(0, len(steps), size):
        span = set(steps[start : start + size])
        rows = [r for r in rollouts if r["step"] in span and r["prompt"] in by_text]
        if not rows:
            continue
        gold = [gold_utility(by_text[r["prompt"]], r["completion"]) for r in rows]
        points.append({
            "kl": sum(r["kl"] for r in rows) / len(rows),
            "proxy": sum(r["score"] for r in rows) / len(rows),
            "gold": sum(gold) / len(gold),
            "label": f"steps {min(span)}-{max(span)}",
        })  # fmt: skip
    return points


TARGETS = {
    "win_rate_rlhf_vs_sft": (">=", 0.75),
    "win_rate_rlhf_vs_reference": (">=", 0.60),
    "toxicity_reduction": (">=", 5.0),
    "rm_gold_minus_labeler_agreement": (">=", 0.0),
    "demo_seconds": ("<=", 600.0),
}


def toxicity_reduction(before: float, after: float, n_after: int) -> float | None:
    """How many times fewer rude completions: before / after. When none of the
    `n_after` completions was rude, one is counted (a lower bound, so the target can
    be met, not a division by zero); None when there were none before either."""
    if not before:
        return None
    return before / max(after, 1.0 / max(n_after, 1))


def _targets(metrics: dict, targets: dict | None = None) -> dict[str, dict]:
    """Each target of the demo (`TARGETS` unless given), the figure reached and
    whether it is met."""
    out = {}
    for name, (op, bound) in (TARGETS if targets is None else targets).items():
        value = metrics.get(name)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


# --- the loop ---------------------------------------------------------------------------


@dataclass
class DemoRun:
    """What the stages of one demo run hand on to each other: the sized config, the
    run directory, and what each stage made (it sets its fields; later stages read
    them). The files in `out` are the real hand-over; these fields hold the same
    data in memory, so no stage reads back what the one before just wrote."""

    cfg: DemoConfig  # sized: `quick` already applied
    out: Path
    started: float  # time.perf_counter() when the run began
    seconds: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    metrics: dict = field(default_factory=dict)  # what metrics.json holds
    # Set by the stages, in order (reading one before its stage ran is an AttributeError):
    paths: dict[str, Path] = field(init=False, repr=False)  # world: build_world's files
    prompts: list[Prompt] = field(init=False, repr=False)  # world: training documents
    eval_prompts: list[Prompt] = field(init=False, repr=False)  # world: held-out documents
    sft: dict = field(init=False, repr=False)  # train_sft's result
    to_label: list[Prompt] = field(init=False, repr=False)  # generate: documents labelled
    completions: list[Completion] = field(init=False, repr=False)  # generate: SFT samples
    rankings: list[Ranking] = field(init=False, repr=False)  # label
    agreement: dict = field(init=False, repr=False)  # label: agreement_report(rankings)
    labeler_pairs: list[Comparison] = field(init=False, repr=False)  # pairs: every labeler's
    consensus_pairs: list[Comparison] = field(init=False, repr=False)  # pairs: consensus's
    kept: set[str] = field(init=False, repr=False)  # pairs: prompt ids the RM trains on
    held: set[str] = field(init=False, repr=False)  # pairs: prompt ids held out to test it
    reward_model: RewardModel = field(init=False, repr=False)  # reward model: trained
    rm_metrics: dict = field(init=False, repr=False)  # reward model: its held-out test
    ppo: dict = field(init=False, repr=False)  # train_ppo's result
    ppo_dir: Path = field(init=False, repr=False)  # PPO (or the last round): the tuned policy
    rounds: list[dict] = field(init=False, repr=False)  # each round's figures (ROUND_KEYS)
    loop: object = field(init=False, repr=False)  # rounds: the `rounds.LoopRun`
    last_round: int = field(init=False, repr=False)  # rounds: how many ran
    evaluation: Evaluation = field(init=False, repr=False)  # evaluate


def _begin(config: DemoConfig) -> DemoRun:
    """Quiet transformers, set torch's threads, make the run directory."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # the stages show their own progress
    hf_logging.set_verbosity_error()
    cfg = config.sized()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return DemoRun(cfg=cfg, out=out, started=time.perf_counter())


def _world(run: DemoRun) -> str:
    """Training and held-out documents, the tokenizer, a random tiny policy."""
    from alignloop.io import read_records

    cfg = run.cfg
    run.paths = build_world(
        run.out / "world", seed=cfg.seed, n_train=cfg.n_train, n_eval=cfg.n_eval
    )
    run.prompts = read_records(run.paths["prompts_train"], Prompt)
    run.eval_prompts = read_records(run.paths["prompts_eval"], Prompt)
    return f"{cfg.n_train} training and {cfg.n_eval} held-out documents"


def _sft(run: DemoRun) -> str:
    """The tiny policy learns the references, from scratch (train-sft)."""
    from alignloop.train.sft import SFTConfig, train_sft

    cfg = run.cfg
    run.sft = train_sft(SFTConfig(
        model=str(run.paths["policy_init"]), prompts=run.paths["prompts_train"],
        out=run.out / "sft", epochs=cfg.sft_epochs, lr=cfg.sft_lr, batch_size=32,
        warmup_ratio=0.05, eval_every=0, save_every=0, seed=cfg.seed,
    ))  # fmt: skip
    return (f"a tiny Llama from scratch on the references: held-out loss "
            f"{run.sft['eval_loss']:.3f} after {run.sft['steps']} steps")  # fmt: skip


def _generate(run: DemoRun) -> str:
    """K completions of each document to label, sampled from the SFT policy."""
    from alignloop.generate import generate_file
    from alignloop.io import read_records

    cfg, out = run.cfg, run.out
    run.to_label = run.prompts[: cfg.n_label]
    write_records(out / "prompts_label.jsonl", run.to_label)
    generate_file(
        out / "sft", out / "prompts_label.jsonl", out / "completions.jsonl", k=cfg.k,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=64,
        seed=cfg.seed, policy_name="sft",
    )  # fmt: skip
    run.completions = read_records(out / "completions.jsonl", Completion)
    return f"{len(run.completions)} completions ({cfg.k} per prompt) from the SFT policy"


def _label(run: DemoRun) -> str:
    """The simulated labelers rank the completions; how much they agree."""
    from alignloop.feedback import agreement_report
    from alignloop.world import default_labelers, simulate_rankings

    cfg = run.cfg
    labelers = default_labelers(cfg.labelers)
    run.rankings = simulate_rankings(
        run.to_label, run.completions, labelers, overlap=cfg.overlap, seed=cfg.seed
    )
    write_records(run.out / "rankings.jsonl", run.rankings)
    run.agreement = agreement = agreement_report(run.rankings)
    write_json(run.out / "agreement.json", agreement)
    console.print(_labeler_table(agreement))
    return (
        f"{len(run.rankings)} rankings by {len(labelers)} labelers, {cfg.overlap} per "
        f"prompt; pairwise agreement {agreement['pairwise_agreement']:.3f}, "
        f"Kendall's W {agreement['kendall_w']:.3f}, "
        f"Krippendorff's alpha {agreement['krippendorff_alpha']:.3f}"
    )


def _pairs(run: DemoRun) -> str:
    """Every labeler's pairs; the Bradley-Terry consensus and its pairs, which the
    reward model trains on, less the prompts held out to test it."""
    from alignloop.feedback import consensus, rankings_to_pairs

    cfg, out = run.cfg, run.out
    run.labeler_pairs = rankings_to_pairs(run.rankings, run.completions, run.to_label).pairs
    write_records(out / "pairs.jsonl", run.labeler_pairs)
    agreed = consensus(run.rankings)
    write_records(out / "consensus.jsonl", agreed)
    run.kept, run.held = split_ids([p.id for p in run.to_label], cfg.rm_held_out, cfg.seed)
    run.consensus_pairs = rankings_to_pairs(agreed, run.completions, run.to_label).pairs
    write_records(
        out / "rm_pairs.jsonl", [p for p in run.consensus_pairs if p.prompt_id in run.kept]
    )
    return (f"{len(run.labeler_pairs)} pairs from the labelers; the reward model "
            f"trains on the consensus of {len(run.kept)} prompts "
            f"({len(run.consensus_pairs)} consensus pairs in all), "
            f"{len(run.held)} prompts held out")  # fmt: skip


def _reward_model(run: DemoRun) -> str:
    """The reward model (train-rm), started from the SFT policy; its accuracy on the
    held-out prompts against the labelers' pairs and the gold judge's."""
    from alignloop.models import RewardModel
    from alignloop.train.reward import RewardConfig, train_reward_model

    cfg, out, held = run.cfg, run.out, run.held
    fits = [  # rm/, then rm-2/, rm-3/ ... (--rm-ensemble)
        train_reward_model(RewardConfig(
            model=str(out / "sft"), data=out / "rm_pairs.jsonl", out=_rm_dir(out, i),
            eval_fraction=0.0, max_length=128, epochs=cfg.rm_epochs, batch_size=16,
            lr=cfg.rm_lr, group_by_length=cfg.rm_group_by_length, eval_every=0,
            save_every=0, seed=cfg.seed + 1000 * i,
        ))
        for i in range(cfg.rm_ensemble)
    ]  # fmt: skip
    run.reward_model = RewardModel.from_pretrained(out / "rm")
    held_completions = [c for c in run.completions if c.prompt_id in held]
    by_id = {p.id: p for p in run.to_label}
    rm_scores = dict(zip(
        [c.id for c in held_completions],
        run.reward_model.score([by_id[c.prompt_id].prompt for c in held_completions],
                               [c.completion for c in held_completions]),
        strict=True,
    ))  # fmt: skip
    vs_labelers = [p for p in run.labeler_pairs if p.prompt_id in held]
    vs_gold = gold_pairs([by_id[i] for i in sorted(held)], held_completions)
    run.rm_metrics = rm = {
        "accuracy_labelers": pair_accuracy(rm_scores, vs_labelers),
        "accuracy_gold": pair_accuracy(rm_scores, vs_gold),
        "n_labeler_pairs": len(vs_labelers),
        "n_gold_pairs": len(vs_gold),
        "train_pairs": sum(1 for p in run.consensus_pairs if p.prompt_id in run.kept),
        "steps": fits[0]["steps"],
    }
    write_json(out / "rm" / "held_out.json", rm)
    return (
        f"on {len(held)} held-out prompts: {rm['accuracy_labelers']:.3f} of "
        f"{len(vs_labelers)} labeler pairs, {rm['accuracy_gold']:.3f} of "
        f"{len(vs_gold)} gold-judge pairs (labelers agree with each other on "
        f"{run.agreement['pairwise_agreement']:.3f})"
    )


def _rm_dir(out: Path, i: int) -> Path:
    """The i-th reward model of --rm-ensemble (0: rm/, the one every figure reads)."""
    return out / ("rm" if i == 0 else f"rm-{i + 1}")


def _ppo(run: DemoRun) -> str:
    """PPO tunes the SFT policy against the reward model (train-ppo)."""
    from alignloop.train.ppo import PPOConfig, train_ppo

    cfg, out = run.cfg, run.out
    run.ppo = train_ppo(PPOConfig(
        policy=str(out / "sft"), prompts=run.paths["prompts_train"], out=out / "ppo",
        reward_model=str(out / "rm"), temperature=cfg.temperature,
        reward_ensemble=[str(_rm_dir(out, i)) for i in range(1, cfg.rm_ensemble)],
        reward_ensemble_penalty=cfg.rm_ensemble_penalty,
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.ppo_batch,
        minibatch_size=cfg.ppo_batch // 2, lr=cfg.ppo_lr, kl_coef=cfg.kl_coef,
        max_steps=cfg.ppo_steps, reward_target=cfg.reward_target, save_every=0,
        sample_every=max(1, cfg.ppo_steps // 4), samples_shown=2, log_rollouts=True,
        reward_max_length=128, seed=cfg.seed,
        # The pass after sampling, as the demo's figures were made (auto would take the
        # sampler's log-probabilities: the same to 1e-6, not bit for bit; issue 17).
        recompute_logprobs="always",
    ))  # fmt: skip
    run.ppo_dir = out / "ppo"
    return (f"{run.ppo['steps']} steps, {run.ppo['episodes']} episodes, stopped by "
            f"{run.ppo['stop_reason']}")  # fmt: skip


def _sample_held_out(
    run: DemoRun, model, tokenizer, name: str, prefix: str | None = None
) -> list[Completion]:
    """`eval_k` samples of every held-out document from one policy, with a progress
    bar; every policy samples from the same seed. `prefix`: a user's, for a policy
    conditioned on users (`generate_completions`)."""
    import torch

    from alignloop.generate import generate_completions
    from alignloop.progress import progress

    cfg = run.cfg
    torch.manual_seed(cfg.seed + 7)
    bar, task = progress(len(run.eval_prompts), f"sampling: {name}", stderr=True)
    with bar:
        return generate_completions(
            model, tokenizer, run.eval_prompts, k=cfg.eval_k, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=64, policy_name=name,
            progress=lambda n: bar.update(task, advance=n), prefix=prefix,
        )  # fmt: skip


def _evaluate(run: DemoRun) -> str:
    """The SFT and RLHF policies summarize the held-out documents; the reward model,
    the gold judge, the KL to SFT, length and toxicity measure them."""
    from alignloop.evaluate import evaluate_completions
    from alignloop.evaluate.metrics import sequence_kl
    from alignloop.models import load_policy
    from alignloop.world import gold_utility

    cfg, out = run.cfg, run.out
    # The policies' own tokenizer: the reward model's appends EOS to every text it reads.
    sft, tokenizer = load_policy(out / "sft")
    policies = {"sft": sft, "rlhf": load_policy(run.ppo_dir)[0]}
    completions = {}
    for name, model in policies.items():
        completions[name] = _sample_held_out(run, model, tokenizer, name)
        write_records(out / "eval" / f"completions_{name}.jsonl", completions[name])
    text_of = {p.id: p.prompt for p in run.eval_prompts}
    rlhf_kl = sequence_kl(
        policies["rlhf"], policies["sft"], tokenizer,
        [text_of[c.prompt_id] for c in completions["rlhf"]],
        [c.completion for c in completions["rlhf"]],
        temperature=cfg.temperature, batch_size=64, max_new_tokens=cfg.max_new_tokens,
    )  # fmt: skip
    run.evaluation = evaluate_completions(
        run.eval_prompts, completions, reward_model=run.reward_model, judge=gold_utility,
        judge_name="gold", toxicity="words", baseline="sft", kl={"rlhf": rlhf_kl},
        tokenizer=tokenizer, reward_max_length=128,
    )  # fmt: skip
    write_json(out / "eval" / "eval.json", run.evaluation.summary())
    win = run.evaluation.win_rates
    return (
        f"{cfg.n_eval} held-out documents x {cfg.eval_k} samples: RLHF beats SFT on "
        f"{win['rlhf_vs_sft/gold']['rate']:.3f} and the references on "
        f"{win['rlhf_vs_prompt_reference/gold']['rate']:.3f} by the gold judge"
    )


def _figures(run: DemoRun) -> dict:
    """The run's headline figures, flat, as metrics.json gives them."""
    import torch

    win, pol = run.evaluation.win_rates, run.evaluation.policies
    rm, agreement = run.rm_metrics, run.agreement
    tox_sft, tox_rlhf = pol["sft"]["toxicity_rate"], pol["rlhf"]["toxicity_rate"]
    n_rlhf = run.cfg.n_eval * run.cfg.eval_k  # held-out RLHF samples
    return dict(
        win_rate_rlhf_vs_sft=win["rlhf_vs_sft/gold"]["rate"],
        win_rate_rlhf_vs_reference=win["rlhf_vs_prompt_reference/gold"]["rate"],
        win_rate_sft_vs_reference=win["sft_vs_prompt_reference/gold"]["rate"],
        win_rate_rlhf_vs_sft_by_reward_model=win["rlhf_vs_sft/reward_model"]["rate"],
        gold_mean_reference=pol["prompt_reference"]["gold_mean"],
        gold_mean_sft=pol["sft"]["gold_mean"],
        gold_mean_rlhf=pol["rlhf"]["gold_mean"],
        reward_mean_sft=pol["sft"]["reward_mean"],
        reward_mean_rlhf=pol["rlhf"]["reward_mean"],
        kl_rlhf_to_sft=pol["rlhf"]["kl_mean"],
        toxicity_rate_reference=pol["prompt_reference"]["toxicity_rate"],
        toxicity_rate_sft=tox_sft,
        toxicity_rate_rlhf=tox_rlhf,
        toxicity_reduction=toxicity_reduction(tox_sft, tox_rlhf, n_rlhf),
        length_words_sft=pol["sft"]["length"]["words"]["mean"],
        length_words_rlhf=pol["rlhf"]["length"]["words"]["mean"],
        rm_gold_accuracy=rm["accuracy_gold"],
        rm_labeler_accuracy=rm["accuracy_labelers"],
        labeler_pairwise_agreement=agreement["pairwise_agreement"],
        labeler_kendall_w=agreement["kendall_w"],
        labeler_krippendorff_alpha=agreement["krippendorff_alpha"],
        rm_gold_minus_labeler_agreement=rm["accuracy_gold"] - agreement["pairwise_agreement"],
        sft_eval_loss=run.sft["eval_loss"],
        ppo_steps=run.ppo["steps"],
        ppo_episodes=run.ppo["episodes"],
        ppo_stop_reason=run.ppo["stop_reason"],
        n_rankings=len(run.rankings),
        n_pairs=len(run.labeler_pairs),
        n_eval_documents=run.cfg.n_eval,
        eval_samples_per_document=run.cfg.eval_k,
        stage_seconds=run.seconds,  # the same dict: it has every stage's time but this one
        torch_threads=torch.get_num_threads(),
    )


def _report(run: DemoRun) -> str:
    """The figures, the targets and report.html (its data in report_data.json)."""
    from alignloop.evaluate import report_data
    from alignloop.evaluate.report import load_ppo_log, render_report

    cfg, out, metrics = run.cfg, run.out, run.metrics
    if not hasattr(run, "rounds"):  # one round, stage by stage
        run.rounds = [_one_round(run)]
    metrics.update(_figures(run))
    metrics["rounds"] = run.rounds
    rollouts = load_ppo_log(run.ppo_dir / "rollouts.jsonl")
    data = report_data(
        run.evaluation, run.eval_prompts, examples=12, title="alignloop demo",
        subtitle=(f"{_rounds_in_words(cfg.rounds)} of RLHF on the built-in summarization task: "
                  f"{cfg.n_train} documents, {len(run.rankings)} simulated rankings, "
                  f"{run.ppo['steps']} PPO steps; held-out documents judged by the "
                  f"hidden gold judge"),
    )  # fmt: skip
    data.update(
        config={k: str(v) for k, v in asdict(cfg).items()},
        ppo_log=load_ppo_log(run.ppo_dir / "metrics.jsonl"),
        sft_log=_log_if_there(out / "sft" / "metrics.jsonl"),
        rm_log=_log_if_there(run.ppo_dir.parent / "rm" / "metrics.jsonl"),  # the last round's
        rounds=[_with_samples(r, out) for r in metrics["rounds"]],
        overoptimization=overoptimization(rollouts, run.prompts),
        reward_model=run.rm_metrics,
        agreement=run.agreement,
    )
    metrics["demo_seconds"] = round(time.perf_counter() - run.started, 2)
    metrics["targets"] = _targets(metrics)
    data["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
    data["targets"] = metrics["targets"]
    write_json(out / "report_data.json", data)
    render_report(data, out / "report.html")
    return f"{out / 'report.html'}"


def _log_if_there(path: Path) -> list[dict]:
    """A metrics log's lines for the report's curves; none where no log was written."""
    from alignloop.evaluate.report import load_ppo_log

    return load_ppo_log(path) if path.exists() else []


def _with_samples(record: dict, out: Path) -> dict:
    """A round's figures with its side-by-side samples, where its evaluation wrote
    them (the rounds path; the one-round report has its own side by side)."""
    path = out / f"round-{record['round']}" / "eval" / "side_by_side.json"
    if not path.exists():
        return record
    return {**record, "side_by_side": json.loads(path.read_text())}


def _rounds_in_words(n: int) -> str:
    return "one round" if n == 1 else f"{n} rounds"


def _one_round(run: DemoRun) -> dict:
    """The one-round demo's figures as one entry of metrics.json's `rounds`."""
    from alignloop.loop.rounds import ROUND_KEYS, judge_pairs
    from alignloop.world import gold_utility

    win, pol = run.evaluation.win_rates, run.evaluation.policies
    rewards = {r["id"]: r["reward"] for r in run.evaluation.rows["rlhf"]}
    rlhf = read_records(run.out / "eval" / "completions_rlhf.jsonl", Completion)
    record = {
        "round": 1,
        "n_rankings": len(run.rankings),
        "win_rate_vs_sft": win["rlhf_vs_sft/gold"]["rate"],
        "win_rate_vs_reference": win["rlhf_vs_prompt_reference/gold"]["rate"],
        "rm_gold_accuracy_on_policy": pair_accuracy(
            rewards, judge_pairs(gold_utility, run.eval_prompts, rlhf)
        ),
        "kl_to_sft": pol["rlhf"]["kl_mean"],
        "gold_mean": pol["rlhf"]["gold_mean"],
        "seconds": round(sum(v for k, v in run.seconds.items() if k not in ("world", "sft")), 2),
    }
    assert tuple(record) == ROUND_KEYS
    return record


def _rounds(run: DemoRun) -> str:
    """The rounds of the loop (`loop.rounds.run_rounds`) from the SFT policy with the
    simulated labelers, the labelled documents split across the rounds."""
    from alignloop.loop.rounds import ROUND_KEYS, run_rounds

    cfg, out = run.cfg, run.out
    _forget_rounds(out)
    loop, records = run_rounds(loop_config(cfg, out, run.paths))
    last = loop.round_dir(len(records))
    run.rounds = [{k: rec[k] for k in ROUND_KEYS} for rec in records]
    run.loop, run.last_round = loop, len(records)
    run.rankings, run.labeler_pairs = [], []
    for n in range(1, len(records) + 1):
        run.rankings += read_records(loop.round_dir(n) / "rankings.jsonl", Ranking)
        run.labeler_pairs += read_records(loop.round_dir(n) / "pairs.jsonl", Comparison)
    run.agreement = json.loads((last / "agreement.json").read_text())["agreement"]
    run.rm_metrics = json.loads((last / "rm" / "held_out.json").read_text())
    run.ppo = json.loads((last / "ppo_result.json").read_text())
    run.ppo_dir = last / "ppo"
    return (f"{len(records)} rounds, {len(run.rankings)} rankings in all; stopped by "
            f"{loop.state['stop_reason']}")  # fmt: skip


def _forget_rounds(out: Path) -> None:
    """The demo starts afresh every time, as the one-round demo always did (its world
    and SFT policy were just made again): an earlier run's rounds, state file and
    held-out samples in `out` go, so none is taken for this run's."""
    import shutil

    for d in out.glob("round-*"):
        shutil.rmtree(d)
    for f in (out / "state.json", out / "eval" / "completions_sft.jsonl"):
        f.unlink(missing_ok=True)


def loop_config(cfg: DemoConfig, out: Path, paths: dict[str, Path]):
    """The demo's rounds as a `LoopConfig`: the SFT policy, the world's prompts and
    gold judge, the simulated labelers; `n_label` documents split by `label_split`."""
    from alignloop.loop.loop_config import LoopConfig

    shares = cfg.label_split or [1.0 / cfg.rounds] * cfg.rounds
    if len(shares) != cfg.rounds:
        from alignloop.config import ConfigError

        raise ConfigError(f"--label-split needs one share per round ({cfg.rounds})")
    sizes = [max(1, round(cfg.n_label * x / sum(shares))) for x in shares[:-1]]
    sizes.append(max(1, cfg.n_label - sum(sizes)))  # the same label budget in all
    return LoopConfig(
        out=out, policy=str(out / "sft"), prompts=paths["prompts_train"],
        eval_prompts=paths["prompts_eval"], judge="alignloop.world:gold_utility",
        seed=cfg.seed, rounds=cfg.rounds, prompts_per_round=max(sizes), round_prompts=sizes,
        k=cfg.k, temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
        source="simulated", overlap=cfg.overlap, labelers=cfg.labelers, rm_init=cfg.rm_init,
        ppo_init=cfg.ppo_init,
        rm_model=str(out / "sft"), rm_epochs=cfg.rm_epochs, rm_lr=cfg.rm_lr, rm_batch_size=16,
        rm_max_length=128, rm_group_by_length=cfg.rm_group_by_length,
        rm_held_out=cfg.rm_held_out, reference=cfg.reference,
        ppo_steps=cfg.ppo_steps, ppo_batch_size=cfg.ppo_batch, ppo_lr=cfg.ppo_lr,
        kl_coef=cfg.kl_coef, ppo_save_every=0, eval_k=cfg.eval_k,
    )  # fmt: skip


def _evaluate_rounds(run: DemoRun) -> str:
    """The last round's policy and the SFT policy on the held-out documents (the
    samples the round's evaluation drew), as the one-round demo's files."""
    from alignloop.loop.rounds import evaluate_round

    n, out = run.last_round, run.out
    run.evaluation, _ = evaluate_round(run.loop, n)
    rlhf = read_records(run.loop.round_dir(n) / "eval" / "completions_rlhf.jsonl", Completion)
    write_records(out / "eval" / "completions_rlhf.jsonl", rlhf)
    write_json(out / "eval" / "eval.json", run.evaluation.summary())
    run.reward_model = None  # type: ignore[assignment]  # the last round's, inside evaluate_round
    win = run.evaluation.win_rates
    return (
        f"round {n}'s policy beats SFT on {win['rlhf_vs_sft/gold']['rate']:.3f} and the "
        f"references on {win['rlhf_vs_prompt_reference/gold']['rate']:.3f} by the gold judge"
    )


class DemoStage(NamedTuple):
    title: str
    step: Callable[[DemoRun], str]  # does the stage's work; returns its summary line
    seconds_key: str | None  # its time in metrics' stage_seconds (None: not counted)
    spinner: bool = True  # False for stages that show their own progress bars


# The demo, in order; printed as "1. world", "2. supervised fine-tuning", ...
STAGES = (
    DemoStage("world", _world, "world"),
    DemoStage("supervised fine-tuning", _sft, "sft", spinner=False),
    DemoStage("generate", _generate, "generate", spinner=False),
    DemoStage("label", _label, "label"),
    DemoStage("pairs", _pairs, "pairs"),
    DemoStage("reward model", _reward_model, "reward_model", spinner=False),
    DemoStage("PPO", _ppo, "ppo", spinner=False),
    DemoStage("evaluate", _evaluate, "evaluate", spinner=False),
    DemoStage("report", _report, None),
)
# The demo with --rounds 2 or more: the rounds machinery between SFT and the report.
ROUND_STAGES = (
    DemoStage("world", _world, "world"),
    DemoStage("supervised fine-tuning", _sft, "sft", spinner=False),
    DemoStage("rounds", _rounds, "rounds", spinner=False),
    DemoStage("evaluate", _evaluate_rounds, "evaluate", spinner=False),
    DemoStage("report", _report, None),
)


def run_demo(config: DemoConfig) -> dict:
    """Run one round of the loop on the built-in world, `STAGES` in order; returns
    the metrics that are also written to `metrics.json` (and shown in `report.html`)."""
    if config.personal and config.rounds > 1:
        from alignloop.config import ConfigError

        raise ConfigError("--personal runs one round of its own; leave out --rounds")
    if config.rm_ensemble > 1 and (config.personal or config.rounds > 1):
        from alignloop.config import ConfigError

        raise ConfigError("--rm-ensemble is for the one-round demo; leave out "
                          f"{'--personal' if config.personal else '--rounds'}")  # fmt: skip
    run = _begin(config)
    stages = STAGES if run.cfg.rounds == 1 else ROUND_STAGES
    if run.cfg.personal:
        from alignloop.loop.personal import PERSONAL_STAGES, PersonalRun

        run = PersonalRun(**{f.name: getattr(run, f.name) for f in dataclasses.fields(run)
                             if f.init})  # fmt: skip
        stages = PERSONAL_STAGES
    for number, (title, step, seconds_key, spinner) in enumerate(stages, start=1):
        with stage(f"{number}. {title}", spinner=spinner) as s:
            s["summary"] = step(run)
        if seconds_key is not None:
            run.seconds[seconds_key] = s["seconds"]
    run.metrics["config"] = {k: str(v) for k, v in asdict(run.cfg).items()}
    write_json(run.out / "metrics.json", run.metrics)
    console.print(_targets_table(run.metrics["targets"]))
    console.print(f"run directory: {run.out}   report: {run.out / 'report.html'}")
    return run.metrics


def _targets_table(targets: dict):
    from rich.table import Table

    table = Table(title="the demo's targets")
    for column in ("figure", "target", "reached", "met"):
        table.add_column(column)
    for name, t in targets.items():
        value = t["value"]
        shown = "-" if value is None else f"{value:.3f}"
        table.add_row(name, t["target"], shown, "[green]yes" if t["met"] else "[red]no")
    return table
