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
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import time
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from alignloop.io import write_json, write_records
from alignloop.schema import Comparison, Completion, Prompt

console = Console(stderr=True)


@dataclass(frozen=True)
class DemoConfig:
    """Sizes, seed and hyperparameters of a demo run; `quick` shrinks it for tests.

    The defaults are what the README's figures come from (2 CPU cores, under 10
    minutes). Sampling is at temperature 1 everywhere: the labelled completions,
    PPO's rollouts and the evaluation sample from the policies' own distributions."""

    out: Path = Path("runs/demo")
    seed: int = 0
    quick: bool = False
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
    # PPO
    ppo_steps: int = 100  # the step budget
    ppo_batch: int = 32  # prompts per rollout
    ppo_lr: float = 1e-4
    kl_coef: float = 0.1
    reward_target: float | None = None  # stop early once the reward reaches this
    # evaluation
    eval_k: int = 4  # samples per held-out document and policy
    # torch CPU threads: the demo's tiny models gain little from more, and on a busy
    # CPU multi-threaded torch slows down many times over
    threads: int | None = 1

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
    better one chosen: the judge's own labels, to test a reward model against."""
    from alignloop.world import judge_prefers

    by_prompt: dict[str, list[Completion]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    pairs = []
    for p in prompts:
        cs = by_prompt.get(p.id, [])
        for i, a in enumerate(cs):
            for b in cs[i + 1 :]:
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


def _targets(metrics: dict) -> dict[str, dict]:
    """Each target of the demo, the figure reached and whether it is met."""
    out = {}
    for name, (op, bound) in TARGETS.items():
        value = metrics.get(name)
        met = value is not None and (value >= bound if op == ">=" else value <= bound)
        out[name] = {"target": f"{op} {bound}", "value": value, "met": met}
    return out


# --- the loop ---------------------------------------------------------------------------


def run_demo(config: DemoConfig) -> dict:
    """Run one round of the loop on the built-in world; returns the metrics that
    are also written to `metrics.json` (and shown in `report.html`)."""
    import torch
    from transformers.utils import logging as hf_logging

    from alignloop.evaluate import evaluate_completions, report_data
    from alignloop.evaluate.metrics import sequence_kl
    from alignloop.evaluate.report import load_ppo_log, render_report
    from alignloop.feedback import agreement_report, consensus, rankings_to_pairs
    from alignloop.generate import generate_completions, generate_file
    from alignloop.io import read_records
    from alignloop.models import RewardModel, load_policy
    from alignloop.train.ppo import PPOConfig, train_ppo
    from alignloop.train.reward import RewardConfig, train_reward_model
    from alignloop.train.sft import SFTConfig, train_sft
    from alignloop.world import default_labelers, gold_utility, simulate_rankings

    hf_logging.disable_progress_bar()  # the stages show their own progress
    hf_logging.set_verbosity_error()
    cfg = config.sized()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    seconds: dict[str, float] = {}
    metrics: dict = {}

    with stage("1. world") as s:
        paths = build_world(out / "world", seed=cfg.seed, n_train=cfg.n_train, n_eval=cfg.n_eval)
        prompts = read_records(paths["prompts_train"], Prompt)
        eval_prompts = read_records(paths["prompts_eval"], Prompt)
        s["summary"] = f"{cfg.n_train} training and {cfg.n_eval} held-out documents"
    seconds["world"] = s["seconds"]

    with stage("1. supervised fine-tuning", spinner=False) as s:
        sft = train_sft(SFTConfig(
            model=str(paths["policy_init"]), prompts=paths["prompts_train"], out=out / "sft",
            epochs=cfg.sft_epochs, lr=cfg.sft_lr, batch_size=32, warmup_ratio=0.05,
            eval_every=0, save_every=0, seed=cfg.seed,
        ))  # fmt: skip
        s["summary"] = (f"a tiny Llama from scratch on the references: held-out loss "
                        f"{sft['eval_loss']:.3f} after {sft['steps']} steps")  # fmt: skip
    seconds["sft"] = s["seconds"]

    with stage("2. generate", spinner=False) as s:
        to_label = prompts[: cfg.n_label]
        write_records(out / "prompts_label.jsonl", to_label)
        generate_file(
            out / "sft", out / "prompts_label.jsonl", out / "completions.jsonl", k=cfg.k,
            temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=64,
            seed=cfg.seed, policy_name="sft",
        )  # fmt: skip
        completions = read_records(out / "completions.jsonl", Completion)
        s["summary"] = f"{len(completions)} completions ({cfg.k} per prompt) from the SFT policy"
    seconds["generate"] = s["seconds"]

    with stage("3. label") as s:
        labelers = default_labelers(cfg.labelers)
        rankings = simulate_rankings(
            to_label, completions, labelers, overlap=cfg.overlap, seed=cfg.seed
        )
        write_records(out / "rankings.jsonl", rankings)
        agreement = agreement_report(rankings)
        write_json(out / "agreement.json", agreement)
        s["summary"] = (
            f"{len(rankings)} rankings by {len(labelers)} labelers, {cfg.overlap} per prompt; "
            f"pairwise agreement {agreement['pairwise_agreement']:.3f}, "
            f"Kendall's W {agreement['kendall_w']:.3f}, "
            f"Krippendorff's alpha {agreement['krippendorff_alpha']:.3f}"
        )
    console.print(_labeler_table(agreement))
    seconds["label"] = s["seconds"]

    with stage("4. pairs") as s:
        labeler_pairs = rankings_to_pairs(rankings, completions, to_label).pairs
        write_records(out / "pairs.jsonl", labeler_pairs)
        agreed = consensus(rankings)
        write_records(out / "consensus.jsonl", agreed)
        kept, held = split_ids([p.id for p in to_label], cfg.rm_held_out, cfg.seed)
        consensus_pairs = rankings_to_pairs(agreed, completions, to_label).pairs
        write_records(out / "rm_pairs.jsonl", [p for p in consensus_pairs if p.prompt_id in kept])
        s["summary"] = (f"{len(labeler_pairs)} pairs from the labelers; the reward model "
                        f"trains on the consensus of {len(kept)} prompts "
                        f"({len(consensus_pairs)} consensus pairs in all), "
                        f"{len(held)} prompts held out")  # fmt: skip
    seconds["pairs"] = s["seconds"]

    with stage("4. reward model", spinner=False) as s:
        rm_fit = train_reward_model(RewardConfig(
            model=str(out / "sft"), data=out / "rm_pairs.jsonl", out=out / "rm",
            eval_fraction=0.0, max_length=128, epochs=cfg.rm_epochs, batch_size=16,
            lr=cfg.rm_lr, eval_every=0, save_every=0, seed=cfg.seed,
        ))  # fmt: skip
        reward_model = RewardModel.from_pretrained(out / "rm")
        held_completions = [c for c in completions if c.prompt_id in held]
        by_id = {p.id: p for p in to_label}
        rm_scores = dict(zip(
            [c.id for c in held_completions],
            reward_model.score([by_id[c.prompt_id].prompt for c in held_completions],
                               [c.completion for c in held_completions]),
            strict=True,
        ))  # fmt: skip
        vs_labelers = [p for p in labeler_pairs if p.prompt_id in held]
        vs_gold = gold_pairs([by_id[i] for i in sorted(held)], held_completions)
        rm_metrics = {
            "accuracy_labelers": pair_accuracy(rm_scores, vs_labelers),
            "accuracy_gold": pair_accuracy(rm_scores, vs_gold),
            "n_labeler_pairs": len(vs_labelers),
            "n_gold_pairs": len(vs_gold),
            "train_pairs": sum(1 for p in consensus_pairs if p.prompt_id in kept),
            "steps": rm_fit["steps"],
        }
        write_json(out / "rm" / "held_out.json", rm_metrics)
        s["summary"] = (
            f"on {len(held)} held-out prompts: {rm_metrics['accuracy_labelers']:.3f} of "
            f"{len(vs_labelers)} labeler pairs, {rm_metrics['accuracy_gold']:.3f} of "
            f"{len(vs_gold)} gold-judge pairs (labelers agree with each other on "
            f"{agreement['pairwise_agreement']:.3f})"
        )
    seconds["reward_model"] = s["seconds"]

    with stage("5. PPO", spinner=False) as s:
        ppo = train_ppo(PPOConfig(
            policy=str(out / "sft"), prompts=paths["prompts_train"], out=out / "ppo",
            reward_model=str(out / "rm"), temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=cfg.ppo_batch,
            minibatch_size=cfg.ppo_batch // 2, lr=cfg.ppo_lr, kl_coef=cfg.kl_coef,
            max_steps=cfg.ppo_steps, reward_target=cfg.reward_target, save_every=0,
            sample_every=max(1, cfg.ppo_steps // 4), samples_shown=2, log_rollouts=True,
            reward_max_length=128, seed=cfg.seed,
        ))  # fmt: skip
        s["summary"] = (f"{ppo['steps']} steps, {ppo['episodes']} episodes, stopped by "
                        f"{ppo['stop_reason']}")  # fmt: skip
    seconds["ppo"] = s["seconds"]

    with stage("6. evaluate") as s:
        policies = {"sft": load_policy(out / "sft")[0], "rlhf": load_policy(out / "ppo")[0]}
        tokenizer = reward_model.tokenizer
        eval_completions = {}
        for name, model in policies.items():
            torch.manual_seed(cfg.seed + 7)
            eval_completions[name] = generate_completions(
                model, tokenizer, eval_prompts, k=cfg.eval_k, temperature=cfg.temperature,
                max_new_tokens=cfg.max_new_tokens, batch_size=64, policy_name=name,
            )  # fmt: skip
            write_records(out / "eval" / f"completions_{name}.jsonl", eval_completions[name])
        text_of = {p.id: p.prompt for p in eval_prompts}
        rlhf_kl = sequence_kl(
            policies["rlhf"], policies["sft"], tokenizer,
            [text_of[c.prompt_id] for c in eval_completions["rlhf"]],
            [c.completion for c in eval_completions["rlhf"]],
            temperature=cfg.temperature, batch_size=64, max_new_tokens=cfg.max_new_tokens,
        )  # fmt: skip
        evaluation = evaluate_completions(
            eval_prompts, eval_completions, reward_model=reward_model, judge=gold_utility,
            judge_name="gold", toxicity="words", baseline="sft", kl={"rlhf": rlhf_kl},
            tokenizer=tokenizer, reward_max_length=128,
        )  # fmt: skip
        write_json(out / "eval" / "eval.json", evaluation.summary())
        win = evaluation.win_rates
        s["summary"] = (
            f"{cfg.n_eval} held-out documents x {cfg.eval_k} samples: RLHF beats SFT on "
            f"{win['rlhf_vs_sft/gold']['rate']:.3f} and the references on "
            f"{win['rlhf_vs_prompt_reference/gold']['rate']:.3f} by the gold judge"
        )
    seconds["evaluate"] = s["seconds"]

    pol = evaluation.policies
    tox_sft, tox_rlhf = pol["sft"]["toxicity_rate"], pol["rlhf"]["toxicity_rate"]
    metrics.update(
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
        toxicity_reduction=(tox_sft / tox_rlhf) if tox_rlhf else None,
        length_words_sft=pol["sft"]["length"]["words"]["mean"],
        length_words_rlhf=pol["rlhf"]["length"]["words"]["mean"],
        rm_gold_accuracy=rm_metrics["accuracy_gold"],
        rm_labeler_accuracy=rm_metrics["accuracy_labelers"],
        labeler_pairwise_agreement=agreement["pairwise_agreement"],
        labeler_kendall_w=agreement["kendall_w"],
        labeler_krippendorff_alpha=agreement["krippendorff_alpha"],
        rm_gold_minus_labeler_agreement=rm_metrics["accuracy_gold"]
        - agreement["pairwise_agreement"],
        sft_eval_loss=sft["eval_loss"],
        ppo_steps=ppo["steps"],
        ppo_episodes=ppo["episodes"],
        ppo_stop_reason=ppo["stop_reason"],
        n_rankings=len(rankings),
        n_pairs=len(labeler_pairs),
        n_eval_documents=cfg.n_eval,
        eval_samples_per_document=cfg.eval_k,
        stage_seconds=seconds,
        torch_threads=torch.get_num_threads(),
    )

    with stage("report") as s:
        rollouts = load_ppo_log(out / "ppo" / "rollouts.jsonl")
        data = report_data(
            evaluation, eval_prompts, examples=12, title="alignloop demo",
            subtitle=(f"one round of RLHF on the built-in summarization task: "
                      f"{cfg.n_train} documents, {len(rankings)} simulated rankings, "
                      f"{ppo['steps']} PPO steps; held-out documents judged by the "
                      f"hidden gold judge"),
        )  # fmt: skip
        data.update(
            config={k: str(v) for k, v in asdict(cfg).items()},
            ppo_log=load_ppo_log(out / "ppo" / "metrics.jsonl"),
            overoptimization=overoptimization(rollouts, prompts),
            reward_model=rm_metrics,
            agreement=agreement,
        )
        metrics["demo_seconds"] = round(time.perf_counter() - started, 2)
        metrics["targets"] = _targets(metrics)
        data["metrics"] = {k: v for k, v in metrics.items() if isinstance(v, int | float | str)}
        write_json(out / "report_data.json", data)
        render_report(data, out / "report.html")
        s["summary"] = f"{out / 'report.html'}"
    metrics["config"] = {k: str(v) for k, v in asdict(cfg).items()}
    write_json(out / "metrics.json", metrics)
    console.print(_targets_table(metrics["targets"]))
    console.print(f"run directory: {out}   report: {out / 'report.html'}")
    return metrics


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
