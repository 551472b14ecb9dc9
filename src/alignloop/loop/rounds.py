"""Rounds of RLHF (`alignloop loop`): each round samples the current policy, has its
completions ranked, trains the reward model on all pairs so far, tunes the policy
with PPO and evaluates it; then the next round starts from the tuned policy
(iterated online RLHF: Stiennon et al. 2020, Bai et al. 2022).

    out/
      state.json           what each round has finished (atomic; read to resume)
      eval/completions_sft.jsonl   the start policy's held-out samples (once)
      round-N/
        prompts.jsonl      this round's prompts to label
        completions.jsonl  K samples of each from the current policy
        rankings.jsonl     the source's rankings (agreement.json: how much they agree)
        pairs.jsonl        every labeler's pairs; consensus.jsonl, rm_pairs.jsonl
        rm_train.jsonl     the pairs of every round so far: what rm/ trains on
        rm/                the reward model (rm-CRITERION/ with several criteria)
        ppo/               the tuned policy, metrics.jsonl, rollouts.jsonl
        eval/              its held-out samples, eval.json, side_by_side.json
        metrics.json       the round's figures
      metrics.json         every round's figures and the final policy's
      report.html          the same as a page (its data in report_data.json)

Each stage writes its files atomically, then `state.json` names it done. Killed at
any point, the same command skips what is done and reruns the stage it was in:
PPO and the reward model from their newest checkpoint (resume=True), the other
stages from the start (each is seeded, so it writes the same files again); a round
waiting for a server finds its project there and waits on.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from alignloop.config import ConfigError
from alignloop.io import read_records, write_json, write_records
from alignloop.loop.demo import console, split_ids, stage
from alignloop.loop.loop_config import RESUMABLE_KEYS, LoopConfig
from alignloop.loop.sources import LabelSource
from alignloop.schema import Comparison, Completion, Prompt, Ranking

__all__ = [
    "ROUND_KEYS",
    "ROUND_STAGES",
    "IdPair",
    "LoopRun",
    "evaluate_round",
    "judge_pairs",
    "make_source",
    "run_loop",
    "run_rounds",
]

# What metrics.json's `rounds` list holds for each round (the report reads these).
ROUND_KEYS = (
    "round", "n_rankings", "win_rate_vs_sft", "win_rate_vs_reference",
    "rm_gold_accuracy_on_policy", "kl_to_sft", "gold_mean", "seconds",
)  # fmt: skip
STATE_VERSION = 1


@dataclass
class LoopRun:
    """What the rounds share: the config, the source, the prompts, the state file."""

    cfg: LoopConfig
    out: Path
    source: LabelSource
    prompts: list[Prompt]  # the training prompts
    eval_prompts: list[Prompt]
    state: dict
    judge: Callable | None = None
    ai_judge: Any = None  # a JudgeLabelers beside another source, or None
    evaluations: dict[int, Any] = field(default_factory=dict)  # round -> (Evaluation, figures)

    def round_dir(self, n: int) -> Path:
        return self.out / f"round-{n}"

    def policy_before(self, n: int) -> str:
        """The policy round n samples from and PPO starts from."""
        return self.cfg.policy if n == 1 else str(self.round_dir(n - 1) / "ppo")

    def rm_dir(self, n: int, criterion: str) -> Path:
        name = "rm" if len(self.cfg.criteria) == 1 else f"rm-{criterion}"
        return self.round_dir(n) / name

    def save_state(self) -> None:
        write_json(self.out / "state.json", self.state)


def make_source(cfg: LoopConfig) -> LabelSource:
    """The configured source of rankings."""
    from alignloop.loop.sources import JudgeLabelers, ServerLabelers, SimulatedLabelers

    if cfg.source == "simulated":
        return SimulatedLabelers(labelers=cfg.labelers, overlap=cfg.overlap, seed=cfg.seed,
                                 criterion=cfg.criteria[0])  # fmt: skip
    if cfg.source == "judge":
        return JudgeLabelers(cfg.ai_judge, criteria=cfg.criteria, max_length=cfg.rm_max_length)
    gold = None
    if cfg.gold is not None:
        gold = (
            read_records(cfg.gold / "prompts.jsonl", Prompt),
            read_records(cfg.gold / "completions.jsonl", Completion),
            read_records(cfg.gold / "rankings.jsonl", Ranking),
        )
    return ServerLabelers(
        url=cfg.server, guidelines=Path(cfg.guidelines).read_text(encoding="utf-8"),
        criteria=cfg.criteria, overlap=cfg.overlap, prefix=cfg.project_prefix, gold=gold,
        gold_rate=cfg.gold_rate, wait_s=cfg.wait_s, min_share=cfg.min_share, poll_s=cfg.poll_s,
    )  # fmt: skip


def _config_record(cfg: LoopConfig) -> dict[str, str]:
    return {k: str(v) for k, v in dataclasses.asdict(cfg).items()}


def _load_state(cfg: LoopConfig, out: Path) -> dict:
    """The state of an earlier run of this directory (its settings must be the same,
    stop rules aside), or a fresh one."""
    path = out / "state.json"
    record = _config_record(cfg)
    if not path.exists():
        return {"version": STATE_VERSION, "config": record, "rounds": {}, "stop_reason": None}
    state = json.loads(path.read_text())
    changed = [k for k, v in state["config"].items()
               if k not in RESUMABLE_KEYS and record.get(k) != v]  # fmt: skip
    if changed:
        raise ConfigError(
            f"{out} holds a loop run with other settings ({', '.join(changed)}): resume it "
            "with the same ones, or choose another --out"
        )
    state["config"] = record
    state["stop_reason"] = None  # the stop rules are checked again (they may have changed)
    return state


# --- the stages of a round ---------------------------------------------------------------


def _round_prompts(run: LoopRun, n: int) -> list[Prompt]:
    """Round n's prompts: the next `prompts_per_round` of the training prompts (from
    the start again when they run out), fewer when the label budget is nearly spent."""
    cfg, pool = run.cfg, run.prompts
    size = min(_planned(cfg, n), len(pool))
    if cfg.label_budget is not None:
        used = sum(r["n_rankings"] for k, r in run.state["rounds"].items()
                   if int(k) < n and "n_rankings" in r)  # fmt: skip
        size = min(size, max(1, (cfg.label_budget - used) // max(1, _rankings_per_prompt(cfg))))
    start = sum(_planned(cfg, m) for m in range(1, n))
    return [pool[(start + i) % len(pool)] for i in range(size)]


def _planned(cfg: LoopConfig, n: int) -> int:
    """Prompts round n labels as configured (--round-prompts, else --prompts-per-round)."""
    if cfg.round_prompts:
        return cfg.round_prompts[min(n, len(cfg.round_prompts)) - 1]
    return cfg.prompts_per_round


def _rankings_per_prompt(cfg: LoopConfig) -> int:
    return (cfg.overlap if cfg.source != "judge" else 1) * len(cfg.criteria)


def _generate(run: LoopRun, n: int) -> str:
    from alignloop.generate import generate_file

    cfg, d = run.cfg, run.round_dir(n)
    prompts = _round_prompts(run, n)
    write_records(d / "prompts.jsonl", prompts)
    count = generate_file(
        run.policy_before(n), d / "prompts.jsonl", d / "completions.jsonl", k=cfg.k,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens, batch_size=64,
        seed=cfg.seed + n - 1, policy_name="start" if n == 1 else f"round-{n - 1}",
    )  # fmt: skip
    return f"{count} completions ({cfg.k} for each of {len(prompts)} prompts)"


def _label(run: LoopRun, n: int) -> str:
    from alignloop.feedback import agreement_report
    from alignloop.loop.sources import judge_agreement

    d = run.round_dir(n)
    prompts = read_records(d / "prompts.jsonl", Prompt)
    completions = read_records(d / "completions.jsonl", Completion)
    status = console.status(f"[bold]round {n}: labels[/bold] from {run.source.name}")
    with status:
        rankings = run.source.collect(
            n, d, prompts, completions, lambda line: status.update(f"round {n}: {line}")
        )
    write_records(d / "rankings.jsonl", rankings)
    run.state["rounds"][str(n)]["n_rankings"] = len(rankings)  # for the label budget
    agreement = agreement_report(rankings)
    info: dict[str, Any] = {"source": run.source.name, "agreement": agreement}
    if run.ai_judge is not None:
        judged = run.ai_judge.collect(n, d, prompts, completions, lambda line: None)
        write_records(d / "judge_rankings.jsonl", judged)
        info["ai_judge"] = judge_agreement(judged, rankings)
    write_json(d / "agreement.json", info)
    line = f"{len(rankings)} rankings from {run.source.name}"
    if agreement.get("pairwise_agreement") is not None:
        line += f"; labelers agree on {agreement['pairwise_agreement']:.3f} of pairs"
    if run.ai_judge is not None and info["ai_judge"]["agreement"] is not None:
        line += f"; the AI judge agrees with them on {info['ai_judge']['agreement']:.3f}"
    return line


def _pairs(run: LoopRun, n: int) -> str:
    """Every labeler's pairs; each prompt's consensus; the pairs the reward model
    trains on (this round's, less its held-out prompts, added to the earlier ones')."""
    from alignloop.feedback import consensus, rankings_to_pairs

    cfg, d = run.cfg, run.round_dir(n)
    prompts = read_records(d / "prompts.jsonl", Prompt)
    completions = read_records(d / "completions.jsonl", Completion)
    rankings = read_records(d / "rankings.jsonl", Ranking)
    labeler_pairs = rankings_to_pairs(rankings, completions, prompts).pairs
    write_records(d / "pairs.jsonl", labeler_pairs)
    agreed = consensus(rankings)
    write_records(d / "consensus.jsonl", agreed)
    kept, held = split_ids(sorted({p.id for p in prompts}), cfg.rm_held_out, cfg.seed + n - 1)
    train = (rankings_to_pairs(agreed, completions, prompts).pairs
             if cfg.rm_pairs == "consensus" else labeler_pairs)  # fmt: skip
    mine = [p for p in train if p.prompt_id in kept]
    write_records(d / "rm_pairs.jsonl", mine)
    everything: list[Comparison] = []
    for m in range(1, n + 1):
        everything += read_records(run.round_dir(m) / "rm_pairs.jsonl", Comparison)
    write_records(d / "rm_train.jsonl", everything)
    write_json(d / "split.json", {"kept": sorted(kept), "held": sorted(held)})
    return (f"{len(labeler_pairs)} pairs from the labelers; the reward model trains on "
            f"{len(everything)} pairs of {n} round(s) ({len(mine)} new), "
            f"{len(held)} prompts held out")  # fmt: skip


def _resume_flag(out: Path) -> bool:
    """True when `out` holds a trainer's checkpoint to resume from; otherwise `out`
    (a stage killed before its first checkpoint) is cleared for a fresh start."""
    from alignloop.train.common import Checkpoints

    if Checkpoints(out / "checkpoints").latest() is not None:
        return True
    if out.exists():
        shutil.rmtree(out)
    return False


def _reward_model(run: LoopRun, n: int) -> str:
    from alignloop.train.reward import RewardConfig, train_reward_model

    cfg, d = run.cfg, run.round_dir(n)
    lines = []
    for criterion in cfg.criteria:
        out = run.rm_dir(n, criterion)
        if cfg.rm_init == "previous" and n > 1:
            start = str(run.rm_dir(n - 1, criterion))
        else:
            start = cfg.rm_model or cfg.policy
        fit = train_reward_model(RewardConfig(
            model=start, data=d / "rm_train.jsonl", out=out, eval_fraction=0.0,
            criterion=criterion if len(cfg.criteria) > 1 else None,
            max_length=cfg.rm_max_length, epochs=cfg.rm_epochs, batch_size=cfg.rm_batch_size,
            lr=cfg.rm_lr, group_by_length=cfg.rm_group_by_length, eval_every=0, save_every=0,
            seed=cfg.seed + n - 1,
            resume=_resume_flag(out),
        ))  # fmt: skip
        held = _held_out_accuracy(run, n, criterion)
        write_json(out / "held_out.json", {**held, "steps": fit["steps"]})
        lines.append(f"{criterion}: {_fmt(held['accuracy_labelers'])} of labeler pairs, "
                     f"{_fmt(held['accuracy_gold'])} of judge pairs held out")  # fmt: skip
    return "; ".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


class IdPair(NamedTuple):
    """A judged pair by completion ids (texts may be empty: a policy's samples)."""

    prompt_id: str
    chosen_id: str
    rejected_id: str


def judge_pairs(judge, prompts: list[Prompt], completions: list[Completion]) -> list[IdPair]:
    """Every pair of a prompt's completions the judge does not tie, the better chosen."""
    by_id = {p.id: p for p in prompts}
    score = {c.id: judge(by_id[c.prompt_id], c.completion) for c in completions}
    by_prompt: dict[str, list[Completion]] = {}
    for c in completions:
        by_prompt.setdefault(c.prompt_id, []).append(c)
    pairs = []
    for pid, cs in by_prompt.items():
        for i, a in enumerate(cs):
            for b in cs[i + 1 :]:
                if abs(score[a.id] - score[b.id]) <= 1e-9:
                    continue
                chosen, rejected = (a, b) if score[a.id] > score[b.id] else (b, a)
                pairs.append(IdPair(pid, chosen.id, rejected.id))
    return pairs


def _held_out_accuracy(run: LoopRun, n: int, criterion: str) -> dict:
    """The round's reward model on its held-out prompts (the current policy's samples):
    its accuracy on the labelers' pairs and on the judge's."""
    from alignloop.loop.demo import pair_accuracy
    from alignloop.models import RewardModel

    d = run.round_dir(n)
    held = set(json.loads((d / "split.json").read_text())["held"])
    prompts = [p for p in read_records(d / "prompts.jsonl", Prompt) if p.id in held]
    completions = [c for c in read_records(d / "completions.jsonl", Completion)
                   if c.prompt_id in held]  # fmt: skip
    model = RewardModel.from_pretrained(run.rm_dir(n, criterion))
    by_id = {p.id: p for p in prompts}
    scores = dict(zip(
        [c.id for c in completions],
        model.score([by_id[c.prompt_id].prompt for c in completions],
                    [c.completion for c in completions], max_length=run.cfg.rm_max_length),
        strict=True,
    ))  # fmt: skip
    vs_labelers = [p for p in read_records(d / "pairs.jsonl", Comparison)
                   if p.prompt_id in held and (p.criterion in (None, criterion))]  # fmt: skip
    vs_judge = judge_pairs(run.judge, prompts, completions) if run.judge else []
    return {
        "accuracy_labelers": pair_accuracy(scores, vs_labelers),
        "accuracy_gold": pair_accuracy(scores, vs_judge),
        "n_labeler_pairs": len(vs_labelers),
        "n_gold_pairs": len(vs_judge),
        "held_out_prompts": len(prompts),
    }


def _ppo(run: LoopRun, n: int) -> str:
    from alignloop.train.ppo import PPOConfig, train_ppo

    cfg, d = run.cfg, run.round_dir(n)
    out = d / "ppo"
    start = cfg.policy if cfg.ppo_init == "start" else run.policy_before(n)
    # The KL's reference: the start policy, or the last round's (PPO's own default, the
    # policy it starts from, covers a run that starts there).
    if cfg.reference == "previous":
        reference = None if start == run.policy_before(n) else run.policy_before(n)
    else:
        reference = None if start == cfg.policy else cfg.policy
    result = train_ppo(PPOConfig(
        policy=start, prompts=cfg.prompts, out=out,
        reward_model=str(run.rm_dir(n, cfg.criteria[0])), reference=reference,
        temperature=cfg.temperature, max_new_tokens=cfg.max_new_tokens,
        batch_size=cfg.ppo_batch_size, minibatch_size=cfg.ppo_batch_size // 2, lr=cfg.ppo_lr,
        kl_coef=cfg.kl_coef, max_steps=cfg.ppo_steps, save_every=cfg.ppo_save_every,
        sample_every=max(1, cfg.ppo_steps // 4), samples_shown=2, log_rollouts=True,
        reward_max_length=cfg.rm_max_length, seed=cfg.seed + n - 1, resume=_resume_flag(out),
    ))  # fmt: skip
    write_json(d / "ppo_result.json", result)
    return (f"{result['steps']} steps, {result['episodes']} episodes, "
            f"stopped by {result['stop_reason']}")  # fmt: skip


def _sample_eval(run: LoopRun, policy: str, name: str, path: Path) -> list[Completion]:
    """`eval_k` samples of every held-out prompt (seeded; written once, read after)."""
    import torch

    from alignloop.generate import generate_completions
    from alignloop.models import load_policy
    from alignloop.progress import progress

    if path.exists():
        return read_records(path, Completion)
    cfg = run.cfg
    model, tokenizer = load_policy(policy)
    torch.manual_seed(cfg.seed + 7)
    bar, task = progress(len(run.eval_prompts), f"sampling: {name}", stderr=True)
    with bar:
        completions = generate_completions(
            model, tokenizer, run.eval_prompts, k=cfg.eval_k, temperature=cfg.temperature,
            max_new_tokens=cfg.max_new_tokens, batch_size=64, policy_name=name,
            progress=lambda k: bar.update(task, advance=k),
        )  # fmt: skip
    write_records(path, completions)
    return completions


def evaluate_round(run: LoopRun, n: int):
    """Round n's tuned policy ("rlhf") and the start policy ("sft") on the held-out
    prompts: `evaluate_completions`' figures (the round's reward model, the judge,
    KL to the start, length, toxicity) and the reward model's accuracy on the tuned
    policy's own samples by the judge. Returns (Evaluation, round figures). Samples
    are written once, so evaluating a round again gives the same figures (in this
    process, the first evaluation's are kept: no second scoring)."""
    if n in run.evaluations:
        return run.evaluations[n]
    from alignloop.evaluate import evaluate_completions
    from alignloop.evaluate.metrics import sequence_kl
    from alignloop.models import RewardModel, load_policy

    cfg, d = run.cfg, run.round_dir(n)
    completions = {
        "sft": _sample_eval(run, cfg.policy, "sft", run.out / "eval" / "completions_sft.jsonl"),
        "rlhf": _sample_eval(run, str(d / "ppo"), "rlhf", d / "eval" / "completions_rlhf.jsonl"),
    }
    tuned, tokenizer = load_policy(d / "ppo")
    start, _ = load_policy(cfg.policy)
    text_of = {p.id: p.prompt for p in run.eval_prompts}
    kl = sequence_kl(
        tuned, start, tokenizer, [text_of[c.prompt_id] for c in completions["rlhf"]],
        [c.completion for c in completions["rlhf"]], temperature=cfg.temperature,
        batch_size=64, max_new_tokens=cfg.max_new_tokens,
    )  # fmt: skip
    reward_model = RewardModel.from_pretrained(run.rm_dir(n, cfg.criteria[0]))
    evaluation = evaluate_completions(
        run.eval_prompts, completions, reward_model=reward_model, judge=run.judge,
        judge_name="gold", toxicity=cfg.toxicity, baseline="sft", kl={"rlhf": kl},
        tokenizer=tokenizer, reward_max_length=cfg.rm_max_length,
    )  # fmt: skip
    write_json(d / "eval" / "eval.json", evaluation.summary())
    # a few held-out prompts side by side (the same prompts every round), for the report
    write_json(d / "eval" / "side_by_side.json", evaluation.side_by_side(run.eval_prompts, 6))
    by = "gold" if run.judge is not None else "reward_model"
    win, pol = evaluation.win_rates, evaluation.policies
    on_policy = None
    if run.judge is not None:
        from alignloop.loop.demo import pair_accuracy

        rewards = {r["id"]: r["reward"] for r in evaluation.rows["rlhf"]}
        on_policy = pair_accuracy(rewards, judge_pairs(run.judge, run.eval_prompts,
                                                        completions["rlhf"]))  # fmt: skip
    reference = win.get(f"rlhf_vs_prompt_reference/{by}")
    figures = {
        "win_rate_vs_sft": win[f"rlhf_vs_sft/{by}"]["rate"],
        "win_rate_vs_reference": reference["rate"] if reference else None,
        "rm_gold_accuracy_on_policy": on_policy,
        "kl_to_sft": pol["rlhf"]["kl_mean"],
        "gold_mean": pol["rlhf"].get("gold_mean"),
        "reward_mean": pol["rlhf"]["reward_mean"],
        "win_rate_vs_sft_by_reward_model": win["rlhf_vs_sft/reward_model"]["rate"],
        "length_words": pol["rlhf"]["length"]["words"]["mean"],
        "toxicity_rate": pol["rlhf"].get("toxicity_rate"),
    }
    run.evaluations[n] = evaluation, figures
    return evaluation, figures


def _evaluate(run: LoopRun, n: int) -> str:
    if not run.eval_prompts:
        run.state["rounds"][str(n)]["figures"] = {}
        return "no --eval-prompts: not evaluated"
    _, figures = evaluate_round(run, n)
    run.state["rounds"][str(n)]["figures"] = figures
    return (f"held out: beats the start on {_fmt(figures['win_rate_vs_sft'])}, the "
            f"references on {_fmt(figures['win_rate_vs_reference'])}; "
            f"KL {figures['kl_to_sft']:.3f}")  # fmt: skip


# (state name, title, function, spinner)
ROUND_STAGES: tuple[tuple[str, str, Callable[[LoopRun, int], str], bool], ...] = (
    ("generate", "generate", _generate, False),
    ("label", "label", _label, False),
    ("pairs", "pairs", _pairs, True),
    ("reward_model", "reward model", _reward_model, False),
    ("ppo", "PPO", _ppo, False),
    ("evaluate", "evaluate", _evaluate, False),
)


# --- the rounds ---------------------------------------------------------------------------


def _round_record(run: LoopRun, n: int) -> dict:
    """Round n's figures: the keys of ROUND_KEYS first, then the rest."""
    r = run.state["rounds"][str(n)]
    d = run.round_dir(n)
    rankings = read_records(d / "rankings.jsonl", Ranking)
    held = {}
    rm_path = run.rm_dir(n, run.cfg.criteria[0]) / "held_out.json"
    if rm_path.exists():
        held = json.loads(rm_path.read_text())
    figures = r.get("figures", {})
    agreement = json.loads((d / "agreement.json").read_text())
    record = {
        "round": n,
        "n_rankings": len(rankings),
        "win_rate_vs_sft": figures.get("win_rate_vs_sft"),
        "win_rate_vs_reference": figures.get("win_rate_vs_reference"),
        "rm_gold_accuracy_on_policy": figures.get("rm_gold_accuracy_on_policy"),
        "kl_to_sft": figures.get("kl_to_sft"),
        "gold_mean": figures.get("gold_mean"),
        "seconds": round(sum(r["seconds"].values()), 2),
    }
    extra = {
        **{k: v for k, v in figures.items() if k not in record},
        "rm_gold_accuracy": held.get("accuracy_gold"),
        "rm_labeler_accuracy": held.get("accuracy_labelers"),
        "labeler_pairwise_agreement": agreement["agreement"].get("pairwise_agreement"),
        "ai_judge_agreement": agreement.get("ai_judge", {}).get("agreement"),
        "ppo": json.loads((d / "ppo_result.json").read_text()),
        "stage_seconds": r["seconds"],
    }
    return {**record, **extra}


def _stop_reason(run: LoopRun, n: int, records: list[dict]) -> str | None:
    """Why the loop stops after round n, or None to go on."""
    cfg, last = run.cfg, records[-1]
    score = last["gold_mean"] if last["gold_mean"] is not None else last.get("reward_mean")
    if cfg.target_win_rate is not None and (last["win_rate_vs_sft"] or 0) >= cfg.target_win_rate:
        return f"target: win rate {last['win_rate_vs_sft']:.3f} >= {cfg.target_win_rate}"
    if cfg.target_reward is not None and score is not None and score >= cfg.target_reward:
        return f"target: held-out score {score:.3f} >= {cfg.target_reward}"
    used = sum(r["n_rankings"] for r in records)
    if cfg.label_budget is not None and used + _rankings_per_prompt(cfg) > cfg.label_budget:
        return f"label budget: {used} of {cfg.label_budget} rankings used"
    if cfg.stop_on_no_gain and len(records) > 1:
        now, before = last["win_rate_vs_sft"], records[-2]["win_rate_vs_sft"]
        if now is not None and before is not None and now <= before + cfg.min_gain:
            return f"no gain: win rate {now:.3f} after {before:.3f}"
    if n >= cfg.rounds:
        return f"rounds: {n}"
    return None


def _summary_line(rec: dict) -> str:
    return (f"[bold]round {rec['round']}[/bold]: {rec['n_rankings']} rankings; beats the "
            f"start on {_fmt(rec['win_rate_vs_sft'])}, the references on "
            f"{_fmt(rec['win_rate_vs_reference'])}; gold {_fmt(rec['gold_mean'])}; reward "
            f"model right on {_fmt(rec['rm_gold_accuracy_on_policy'])} of the new policy's "
            f"pairs; KL {_fmt(rec['kl_to_sft'])}; {rec['seconds']:.0f}s")  # fmt: skip


def open_run(config: LoopConfig) -> LoopRun:
    """The run directory, its state (a fresh one, or an earlier run's to resume), the
    source, the prompts and the judge."""
    from alignloop.evaluate import load_judge
    from alignloop.io import read_prompts
    from alignloop.loop.sources import JudgeLabelers

    cfg = config
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    state = _load_state(cfg, out)
    ai_judge = None
    if cfg.ai_judge and cfg.source != "judge":
        ai_judge = JudgeLabelers(cfg.ai_judge, criteria=cfg.criteria, max_length=cfg.rm_max_length)
    return LoopRun(
        cfg=cfg, out=out, source=make_source(cfg), prompts=read_prompts(cfg.prompts),
        eval_prompts=read_prompts(cfg.eval_prompts) if cfg.eval_prompts else [], state=state,
        judge=load_judge(cfg.judge) if cfg.judge else None, ai_judge=ai_judge,
    )  # fmt: skip


def run_rounds(config: LoopConfig) -> tuple[LoopRun, list[dict]]:
    """Run (or resume) rounds until a stop rule holds; returns the run and every
    round's figures (`_round_record`), also in each round's metrics.json."""
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    if config.threads:
        torch.set_num_threads(config.threads)
    run = open_run(config)
    records: list[dict] = []
    n = 0
    while True:
        n += 1
        r = run.state["rounds"].setdefault(str(n), {"done": [], "seconds": {}})
        for key, title, step, spinner in ROUND_STAGES:
            if key in r["done"]:
                continue
            with stage(f"round {n} · {title}", spinner=spinner) as s:
                s["summary"] = step(run, n)
            r["done"].append(key)
            r["seconds"][key] = s["seconds"]
            run.save_state()
        record = _round_record(run, n)
        write_json(run.round_dir(n) / "metrics.json", record)
        records.append(record)
        console.print(_summary_line(record))
        reason = _stop_reason(run, n, records)
        if reason is not None:
            run.state["stop_reason"] = reason
            run.save_state()
            console.print(f"[bold]stopped[/bold] after round {n}: {reason}")
            return run, records


def run_loop(config: LoopConfig) -> dict:
    """`alignloop loop`: the rounds, then metrics.json (each round's figures under
    `rounds`, the last round's as the final policy's)."""
    run, records = run_rounds(config)
    metrics = {
        "rounds": [{k: rec[k] for k in ROUND_KEYS} for rec in records],
        "final": records[-1],
        "final_policy": str(run.round_dir(len(records)) / "ppo"),
        "stop_reason": run.state["stop_reason"],
        "n_rankings": sum(rec["n_rankings"] for rec in records),
        "config": run.state["config"],
    }
    write_json(run.out / "metrics.json", metrics)
    if run.eval_prompts:
        _report(run, records)
    console.print(f"run directory: {run.out}   final policy: {metrics['final_policy']}")
    return metrics


def _report(run: LoopRun, records: list[dict]) -> None:
    """report.html (its data in report_data.json): the last round's policy against the
    start on the held-out prompts, every round's figures and samples, the curves of
    the last round's reward model and PPO."""
    from alignloop.evaluate import report_data
    from alignloop.evaluate.report import load_ppo_log, render_report

    n = len(records)
    evaluation, _ = evaluate_round(run, n)
    d = run.round_dir(n)
    data = report_data(
        evaluation, run.eval_prompts, examples=12, title="alignloop loop",
        subtitle=(f"{n} round(s) of RLHF from {run.cfg.policy}: "
                  f"{sum(r['n_rankings'] for r in records)} rankings from {run.source.name}; "
                  f"stopped by {run.state['stop_reason']}"),
    )  # fmt: skip
    rounds = []
    for rec in records:
        shown = {k: rec[k] for k in ROUND_KEYS}
        samples = run.round_dir(rec["round"]) / "eval" / "side_by_side.json"
        if samples.exists():
            shown["side_by_side"] = json.loads(samples.read_text())
        rounds.append(shown)
    data.update(
        config=run.state["config"], rounds=rounds,
        ppo_log=load_ppo_log(d / "ppo" / "metrics.jsonl"),
        rm_log=load_ppo_log(run.rm_dir(n, run.cfg.criteria[0]) / "metrics.jsonl"),
    )  # fmt: skip
    write_json(run.out / "report_data.json", data)
    render_report(data, run.out / "report.html")
