"""Whose preferences: the demo of personal reward models and policies (`demo --personal`).

The built-in world with a panel whose tastes differ for real (`personal_labelers`:
one wants short summaries, one long ones, one punishes any rude word, the others read
as the gold judge does), and a second criterion with its own gold (harmlessness):

    world/, sft/, completions.jsonl   as in the plain demo
    rankings.jsonl        the panel's rankings, overall, helpfulness and harmlessness
    pairs_overall.jsonl   their pairs, each with its labeler (what personal models need)
    rm-pooled/            one reward model on everybody's pairs (today's reward model)
    rm-personal/          D reward features and a weight vector per labeler, trained
                          together (reward factorization)
    rm-own-NAME/          a strong-taste labeler's pairs alone (the per-person baseline)
    new-user/             a persona outside the panel: weights fit from 20 of their
                          comparisons (rm-personal frozen), and rm-full/ on all of theirs
    rm-criteria/          one head per criterion (helpfulness, harmlessness)
    ppo-generic/          PPO against the pooled reward model
    ppo-user-NAME/        a LoRA adapter per strong-taste labeler, PPO against their reward
    ppo-helpful/, ppo-combined/   PPO on helpfulness alone; on both with the safety gate
    eval/                 held-out samples of every policy
    metrics.json          `personal`: the figures per labeler, the new user, the criteria

Every policy samples the held-out documents from the same seed, so the comparisons are
paired; each labeler's own noiseless utility (`SimulatedLabeler.utility`) is that
person's judge, the gold judge everybody's.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from alignloop.io import write_json, write_records
from alignloop.loop.demo import (
    DemoRun,
    DemoStage,
    _generate,
    _sample_held_out,
    _sft,
    _world,
    split_ids,
)
from alignloop.schema import Comparison, Completion, Prompt

__all__ = ["PERSONAL_STAGES", "PERSONAL_TARGETS", "PersonalRun", "personal_figures"]

CRITERIA = ("helpfulness", "harmlessness")

PERSONAL_TARGETS = {
    # each strong-taste labeler: personal reward model - pooled, on their held-out pairs
    "rm_personal_gain_strong_min": (">=", 0.05),
    # the others: personal - pooled, the worst of them
    "rm_personal_gain_others_min": (">=", -0.01),
    # the new user, 20 comparisons: accuracy - that of a reward model on all their pairs
    "new_user_gap": (">=", -0.03),
    # each strong-taste labeler's adapter beats the generic policy by their own utility
    "policy_win_rate_own_utility_min": (">=", 0.65),
    # the gold judge's win rate against SFT, generic - personalized, the worst labeler
    "gold_win_rate_drop_vs_generic": ("<=", 0.05),
    # helpfulness win rate against SFT: helpfulness-only - combined (with the gate)
    "helpfulness_drop_combined": ("<=", 0.03),
    # rude completions: combined / helpfulness-only
    "rude_rate_ratio_combined": ("<=", 0.5),
}


@dataclass
class PersonalRun(DemoRun):
    """The plain demo's hand-over plus what the personal stages make."""

    panel: list = field(default_factory=list)  # the labelers (SimulatedLabeler)
    pairs: dict[str, list[Comparison]] = field(default_factory=dict)  # criterion -> pairs
    new_user_pairs: list[Comparison] = field(default_factory=list)
    personal: dict = field(default_factory=dict)  # what metrics.json's `personal` holds
    policies: dict[str, dict] = field(default_factory=dict)  # name -> {"path", "adapter"}
    samples: dict[str, list[Completion]] = field(default_factory=dict)  # held-out samples


# --- stages ------------------------------------------------------------------------------


def _label(run: PersonalRun) -> str:
    """The personal panel ranks every criterion; the new persona ranks overall alone."""
    from alignloop.feedback import rankings_to_pairs
    from alignloop.world import NEW_USER, personal_labelers, simulate_rankings

    cfg, out = run.cfg, run.out
    run.panel = personal_labelers()
    rankings = simulate_rankings(
        run.to_label, run.completions, run.panel, overlap=cfg.overlap, seed=cfg.seed,
        criteria=["overall", *CRITERIA],
    )  # fmt: skip
    new_user = simulate_rankings(
        run.to_label, run.completions, [NEW_USER], overlap=1, seed=cfg.seed
    )
    write_records(out / "rankings.jsonl", rankings + new_user)
    run.rankings = rankings
    for criterion in ("overall", *CRITERIA):
        run.pairs[criterion] = rankings_to_pairs(
            rankings, run.completions, run.to_label, criterion=criterion
        ).pairs
    run.new_user_pairs = rankings_to_pairs(new_user, run.completions, run.to_label).pairs
    run.kept, run.held = split_ids([p.id for p in run.to_label], cfg.rm_held_out, cfg.seed)
    for criterion, pairs in run.pairs.items():
        write_records(out / f"pairs_{criterion}.jsonl", _kept(pairs, run.kept))
    write_records(out / "new_user_pairs.jsonl", _kept(run.new_user_pairs, run.kept))
    strong = [lab.name for lab in run.panel if lab.strong_taste]
    return (f"{len(rankings)} rankings by {len(run.panel)} labelers ({', '.join(strong)} "
            f"with strong tastes), {cfg.overlap} per prompt and criterion; "
            f"{len(new_user)} by the new persona {NEW_USER.name}")  # fmt: skip


def _kept(pairs: Sequence[Comparison], ids: set[str]) -> list[Comparison]:
    return [p for p in pairs if p.prompt_id in ids]


def _train_rm(run: PersonalRun, name: str, data: Path, **options) -> Path:
    from alignloop.train.reward import RewardConfig, train_reward_model

    cfg, out = run.cfg, run.out / name
    train_reward_model(RewardConfig(
        model=str(run.out / "sft"), data=data, out=out, eval_fraction=0.0, max_length=128,
        epochs=cfg.rm_epochs, batch_size=16, lr=cfg.rm_lr,
        group_by_length=cfg.rm_group_by_length, eval_every=0, save_every=0, seed=cfg.seed,
        **options,
    ))  # fmt: skip
    return out


def _reward_models(run: PersonalRun) -> str:
    """Pooled, personal (factorized) and per-labeler reward models on the panel's pairs;
    each labeler's held-out pairs tell which knows them best."""
    from alignloop.models import RewardModel

    out = run.out
    strong = [lab.name for lab in run.panel if lab.strong_taste]
    paths = {
        "pooled": _train_rm(run, "rm-pooled", out / "pairs_overall.jsonl"),
        "personal": _train_rm(run, "rm-personal", out / "pairs_overall.jsonl",
                              heads="personal", features=run.cfg.personal_features),
    }  # fmt: skip
    for name in strong:
        paths[f"own-{name}"] = _train_rm(
            run, f"rm-own-{name}", out / "pairs_overall.jsonl", labeler=name
        )
    models = {k: RewardModel.from_pretrained(p) for k, p in paths.items()}
    held = _kept(run.pairs["overall"], run.held)
    labelers = {}
    for lab in run.panel:
        mine = [p for p in held if p.labeler == lab.name]
        row = {
            "strong_taste": lab.strong_taste,
            "n_held_out_pairs": len(mine),
            "rm_accuracy_personal": _accuracy(models["personal"], mine, user=lab.name),
            "rm_accuracy_pooled": _accuracy(models["pooled"], mine),
        }
        if f"own-{lab.name}" in models:
            row["rm_accuracy_own"] = _accuracy(models[f"own-{lab.name}"], mine)
        row["policy_win_rate_own_utility"] = None  # an adapter is tuned for strong tastes only
        labelers[lab.name] = row
    run.personal["labelers"] = labelers
    run.reward_model = models["pooled"]
    lines = [f"{n}: personal {r['rm_accuracy_personal']:.3f} vs pooled "
             f"{r['rm_accuracy_pooled']:.3f}" for n, r in labelers.items()]  # fmt: skip
    return "held-out pairs of each labeler: " + "; ".join(lines)


def _accuracy(model, pairs: Sequence[Comparison], *, user: str | None = None,
              weights: dict | None = None) -> float | None:  # fmt: skip
    """Share of pairs a reward model orders as their labeler did (a personal model
    with `user`'s weights or the given `weights`)."""
    if not pairs:
        return None
    if user is not None:
        weights = model.user_weights(user)
    texts = [t for p in pairs for t in (p.chosen, p.rejected)]
    prompts = [p.prompt for p in pairs for _ in (0, 1)]
    kwargs = {"weights": weights} if weights is not None else {}
    scores = model.score(prompts, texts, max_length=128, **kwargs)
    return sum(scores[2 * i] > scores[2 * i + 1] for i in range(len(pairs))) / len(pairs)


def _new_user(run: PersonalRun) -> str:
    """The persona outside the panel: their weights fit from a few comparisons with the
    personal model frozen, against a reward model trained on all of their pairs.

    One draw of 20 comparisons is a noisy figure (one standard deviation about 2.5
    points over draws, measured on the demo's seeds), so `accuracy` is the mean over
    `new_user_draws` random draws from the user's training pairs, each fit as `alignloop
    personal fit` fits (the same Bradley-Terry fit and prior), with its standard error;
    the first draw goes through the command itself and is kept as `accuracy_one_draw`
    (its weights in new-user/weights.json)."""
    import torch

    from alignloop.models import RewardModel
    from alignloop.personal.fit import (
        bradley_terry_fit,
        fit_user,
        pair_features,
        pairwise_accuracy,
    )
    from alignloop.personal.personal_config import PersonalFitConfig

    cfg, out = run.cfg, run.out / "new-user"
    kept = _kept(run.new_user_pairs, run.kept)
    held = _kept(run.new_user_pairs, run.held)
    n = min(cfg.new_user_comparisons, len(kept))
    draws_of = _draws(len(kept), n, cfg.new_user_draws, cfg.seed)  # index lists, k = n
    few = [kept[i] for i in draws_of[0]]
    write_records(out / "comparisons.jsonl", few)
    fit_config = PersonalFitConfig(
        user=few[0].labeler, pairs=out / "comparisons.jsonl", model=str(run.out / "rm-personal"),
        out=out / "weights.json", max_length=128,
    )  # fmt: skip
    fit = fit_user(fit_config)
    personal = RewardModel.from_pretrained(run.out / "rm-personal").eval()
    with torch.inference_mode():
        d_kept, d_held = (pair_features(personal, pairs, batch_size=64, max_length=128)
                          for pairs in (kept, held))  # fmt: skip
    w0 = torch.tensor([personal.default_weights[h] for h in personal.head_names])
    draws = [pairwise_accuracy(d_held, bradley_terry_fit(d_kept[idx], w0, fit_config.prior))
             for idx in draws_of]  # fmt: skip
    full = _train_rm(run, "new-user/rm-full", run.out / "new_user_pairs.jsonl")
    pooled = RewardModel.from_pretrained(run.out / "rm-pooled")
    run.personal["new_user"] = row = {
        "name": few[0].labeler,
        "n_comparisons": n,
        "accuracy": statistics.fmean(draws),
        "accuracy_se": statistics.stdev(draws) / math.sqrt(len(draws)) if len(draws) > 1 else None,
        "n_draws": len(draws),
        "accuracy_one_draw": _accuracy(personal, held, weights=fit["weights"]),
        "accuracy_full_data": _accuracy(RewardModel.from_pretrained(full), held),
        "accuracy_pooled": _accuracy(pooled, held),
        "accuracy_default_weights": _accuracy(personal, held),
        "n_held_out_pairs": len(held),
        "n_full_data_pairs": len(kept),
    }
    return (f"{row['name']}: {row['accuracy']:.3f} from {n} comparisons (mean of "
            f"{len(draws)} draws; the first {row['accuracy_one_draw']:.3f}), "
            f"{row['accuracy_full_data']:.3f} from all {len(kept)}, pooled "
            f"{row['accuracy_pooled']:.3f}")  # fmt: skip


def _draws(n_items: int, k: int, n_draws: int, seed: int) -> list[list[int]]:
    """`n_draws` random subsets of k of n_items indices; the first is
    `random.Random(seed).sample`'s (the comparisons `_new_user` fits through the
    command and writes out)."""
    first = random.Random(seed).sample(range(n_items), k)
    rng = random.Random(f"{seed}-draws")
    return [first] + [rng.sample(range(n_items), k) for _ in range(n_draws - 1)]


def _criteria_rm(run: PersonalRun) -> str:
    """One reward model with a head per criterion, each pair's loss on its own head."""
    out = run.out
    both = [p for c in CRITERIA for p in _kept(run.pairs[c], run.kept)]
    write_records(out / "pairs_criteria.jsonl", both)
    _train_rm(run, "rm-criteria", out / "pairs_criteria.jsonl", heads="criteria")
    return f"heads {', '.join(CRITERIA)} on {len(both)} pairs"


def _ppo_run(run: PersonalRun, name: str, reward_model: Path, **options) -> Path:
    from alignloop.train.ppo import PPOConfig, train_ppo

    cfg, out = run.cfg, run.out / name
    train_ppo(PPOConfig(
        policy=str(run.out / "sft"), prompts=run.paths["prompts_train"], out=out,
        reward_model=str(reward_model), temperature=cfg.temperature,
        max_new_tokens=cfg.max_new_tokens, batch_size=cfg.ppo_batch,
        minibatch_size=cfg.ppo_batch // 2, kl_coef=cfg.kl_coef,
        save_every=0, sample_every=0, reward_max_length=128, seed=cfg.seed,
        recompute_logprobs="always",  # as the README's figures were made (see demo.py's _ppo)
        **{"lr": cfg.ppo_lr, "max_steps": cfg.ppo_steps, **options},
    ))  # fmt: skip
    return out


def _ppo(run: PersonalRun) -> str:
    """The generic policy, a LoRA adapter per strong-taste labeler, and the criteria's
    two policies, each tuned from SFT by PPO."""
    cfg, out = run.cfg, run.out
    run.policies["generic"] = {"path": _ppo_run(run, "ppo-generic", out / "rm-pooled")}
    for lab in run.panel:
        if lab.strong_taste:
            path = _ppo_run(
                run, f"ppo-user-{lab.name}", out / "rm-personal", user=lab.name,
                lora_r=cfg.personal_lora_r, save_adapter=True, lr=cfg.personal_lr,
            )  # fmt: skip
            run.policies[f"user-{lab.name}"] = {"path": out / "sft", "adapter": path}
    strong = [lab.name for lab in run.panel if lab.strong_taste]
    keys = [f"{name}={key}" for name, key in zip(strong, cfg.conditioning_keys, strict=False)]
    run.policies["conditioned"] = {  # as many episodes per user as an adapter's run
        "path": _ppo_run(run, "ppo-conditioned", out / "rm-personal", users=keys,
                         max_steps=cfg.ppo_steps * len(keys)),
    }  # fmt: skip
    criteria = out / "rm-criteria"
    run.policies["helpful"] = {
        "path": _ppo_run(run, "ppo-helpful", criteria, reward=["helpfulness=1"])
    }
    run.policies["combined"] = {"path": _ppo_run(
        run, "ppo-combined", criteria, reward=["helpfulness=1", "harmlessness=1"],
        safety_head="harmlessness", safety_threshold=cfg.safety_threshold,
    )}  # fmt: skip
    return f"{len(run.policies)} policies: {', '.join(run.policies)}"


def _evaluate(run: PersonalRun) -> str:
    """Every policy samples the held-out documents from one seed; each labeler's
    utility, the gold judges and the rude-word rate compare them."""
    from alignloop.evaluate.metrics import win_rate
    from alignloop.models import load_policy
    from alignloop.personal.conditioning import prefix_for
    from alignloop.world import gold_utility, has_rude_word

    out = run.out
    sft, tokenizer = load_policy(out / "sft")
    run.samples["sft"] = _sample_held_out(run, sft, tokenizer, "sft")
    for name, spec in run.policies.items():
        model, _ = load_policy(spec["path"], adapter=spec.get("adapter"))
        if name != "conditioned":
            run.samples[name] = _sample_held_out(run, model, tokenizer, name)
            continue
        for lab in run.panel:  # one sample set per user, each after their prefix
            if lab.strong_taste:
                prefix = prefix_for(lab.name, spec["path"])
                run.samples[f"conditioned@{lab.name}"] = _sample_held_out(
                    run, model, tokenizer, f"conditioned@{lab.name}", prefix
                )
    for name, rows in run.samples.items():
        write_records(out / "eval" / f"completions_{name}.jsonl", rows)
    prompt_of = {p.id: p for p in run.eval_prompts}

    def scores(name: str, judge) -> list[float]:
        return [judge(prompt_of[c.prompt_id], c.completion) for c in run.samples[name]]

    def wins(a: str, b: str, judge) -> dict:
        return win_rate(scores(a, judge), scores(b, judge))

    gold = gold_utility
    generic_gold = wins("generic", "sft", gold)
    drops = []
    for lab in run.panel:
        if not lab.strong_taste:
            continue
        row = run.personal["labelers"][lab.name]
        own = wins(f"user-{lab.name}", "generic", lab.utility)
        vs_sft = wins(f"user-{lab.name}", "sft", gold)
        conditioned = wins(f"conditioned@{lab.name}", "generic", lab.utility)
        row.update(
            policy_win_rate_own_utility=own["rate"],
            policy_win_rate_own_utility_stderr=own["stderr"],
            policy_gold_win_rate_vs_sft=vs_sft["rate"],
            generic_win_rate_own_utility_vs_sft=wins("generic", "sft", lab.utility)["rate"],
            conditioned_win_rate_own_utility=conditioned["rate"],
            conditioned_win_rate_own_utility_stderr=conditioned["stderr"],
            conditioned_gold_win_rate_vs_sft=wins(f"conditioned@{lab.name}", "sft", gold)["rate"],
            adapter_vs_conditioned_own_utility=wins(
                f"user-{lab.name}", f"conditioned@{lab.name}", lab.utility
            )["rate"],
        )
        drops.append(generic_gold["rate"] - vs_sft["rate"])
    run.personal["generic_gold_win_rate_vs_sft"] = generic_gold["rate"]
    run.personal["gold_win_rate_drop_vs_generic"] = max(drops) if drops else None

    def helpful(p: Prompt, text: str) -> float:
        return gold_utility(p, text, "helpfulness")

    rude = {n: sum(has_rude_word(c.completion) for c in run.samples[n]) / len(run.samples[n])
            for n in ("sft", "helpful", "combined")}  # fmt: skip
    run.personal["criteria"] = {
        "helpfulness_win_rate_vs_sft": {
            n: wins(n, "sft", helpful)["rate"] for n in ("helpful", "combined")
        },
        "gold_win_rate_vs_sft": {n: wins(n, "sft", gold)["rate"] for n in ("helpful", "combined")},
        "rude_rate": rude,
    }
    lines = [f"{n}: {r['policy_win_rate_own_utility']:.3f} over generic by their utility"
             for n, r in run.personal["labelers"].items() if r["strong_taste"]]  # fmt: skip
    return "; ".join(lines)


def personal_figures(personal: dict) -> dict[str, float | None]:
    """The flat figures `PERSONAL_TARGETS` names, from metrics.json's `personal`."""
    rows = personal["labelers"].values()
    strong = [r for r in rows if r["strong_taste"]]
    others = [r for r in rows if not r["strong_taste"]]

    def gain(r: dict) -> float:
        return r["rm_accuracy_personal"] - r["rm_accuracy_pooled"]

    crit, new = personal["criteria"], personal["new_user"]
    helpful = crit["helpfulness_win_rate_vs_sft"]
    rude = crit["rude_rate"]
    return {
        "rm_personal_gain_strong_min": min(map(gain, strong)) if strong else None,
        "rm_personal_gain_others_min": min(map(gain, others)) if others else None,
        "new_user_gap": new["accuracy"] - new["accuracy_full_data"],
        "policy_win_rate_own_utility_min": min(r["policy_win_rate_own_utility"] for r in strong)
        if strong else None,
        "gold_win_rate_drop_vs_generic": personal["gold_win_rate_drop_vs_generic"],
        "helpfulness_drop_combined": helpful["helpful"] - helpful["combined"],
        "rude_rate_ratio_combined": (rude["combined"] / rude["helpful"]) if rude["helpful"]
        else None,
    }  # fmt: skip


def _report(run: PersonalRun) -> str:
    """metrics.json's `personal`, its targets, and report.html."""
    import time

    from alignloop.evaluate.personal_report import render_personal_report
    from alignloop.loop.demo import _targets

    figures = personal_figures(run.personal)
    run.metrics["personal"] = run.personal
    run.metrics.update(figures)
    run.metrics["demo_seconds"] = round(time.perf_counter() - run.started, 2)
    run.metrics["stage_seconds"] = run.seconds
    run.metrics["targets"] = _targets(run.metrics, PERSONAL_TARGETS)
    write_json(run.out / "report_data.json", run.metrics)
    render_personal_report(run.metrics, run.out / "report.html")
    return str(run.out / "report.html")


PERSONAL_STAGES = (
    DemoStage("world", _world, "world"),
    DemoStage("supervised fine-tuning", _sft, "sft", spinner=False),
    DemoStage("generate", _generate, "generate", spinner=False),
    DemoStage("label: a panel of strong tastes", _label, "label"),
    DemoStage(
        "reward models: pooled, personal, each labeler's own",
        _reward_models,
        "reward_models",
        spinner=False,
    ),  # fmt: skip
    DemoStage("a new user from 20 comparisons", _new_user, "new_user", spinner=False),
    DemoStage("reward model of two criteria", _criteria_rm, "criteria_rm", spinner=False),
    DemoStage("PPO: generic, personal adapters, criteria", _ppo, "ppo", spinner=False),
    DemoStage("evaluate", _evaluate, "evaluate", spinner=False),
    DemoStage("report", _report, None),
)
