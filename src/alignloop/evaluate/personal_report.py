"""The personal demo's report: whose preferences each model and policy serves.

It leads with sentences and the targets, then one row and one pair of bars per
labeler (the personal reward model against the pooled one on that person's held-out
pairs; their adapter against the generic policy by their own utility), the new user,
and the two criteria. It reads metrics.json as `loop/personal.py` writes it and uses
the plain report's page parts, so both look alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from alignloop.evaluate.report import (
    _CSS,
    _badge,
    _e,
    _figure,
    _fmt,
    _img,
    _png,
    _section,
    _table,
)

__all__ = ["render_personal_report"]

_TARGET_WORDS = {
    "rm_personal_gain_strong_min": "personal reward model above the pooled one, each "
    "strong-taste labeler's held-out pairs (the smallest gain)",
    "rm_personal_gain_others_min": "the same for the other labelers (the worst)",
    "new_user_gap": "new user, 20 comparisons: accuracy minus that of a reward model on "
    "all their pairs",
    "policy_win_rate_own_utility_min": "each strong-taste labeler's adapter beats the "
    "generic policy, by their own utility (the lowest)",
    "gold_win_rate_drop_vs_generic": "gold judge's win rate against SFT lost by a "
    "personalized policy (the largest drop)",
    "helpfulness_drop_combined": "helpfulness win rate against SFT lost by adding "
    "harmlessness and the safety gate",
    "rude_rate_ratio_combined": "rude completions, combined policy over helpfulness-only",
}


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:+.1f} points"


def _headline(m: Mapping[str, Any]) -> str:
    p = m["personal"]
    strong = {n: r for n, r in p["labelers"].items() if r["strong_taste"]}
    sentences = []
    for name, r in strong.items():
        gain = r["rm_accuracy_personal"] - r["rm_accuracy_pooled"]
        sentences.append(
            f"For {name}, the personal reward model orders {_pct(r['rm_accuracy_personal'])} "
            f"of their held-out pairs as they did, the pooled one {_pct(r['rm_accuracy_pooled'])} "
            f"({_points(gain)}); their own adapter beats the generic policy on "
            f"{_pct(r.get('policy_win_rate_own_utility'))} of paired samples by their taste, "
            f"the one policy conditioned on the users "
            f"{_pct(r.get('conditioned_win_rate_own_utility'))}; their adapter beats it on "
            f"{_pct(r.get('adapter_vs_conditioned_own_utility'))}."
        )
    new = p["new_user"]
    draws = (f" (the mean over {new['n_draws']} random draws of {new['n_comparisons']})"
             if new.get("n_draws", 1) > 1 else "")  # fmt: skip
    sentences.append(
        f"A new user, {new['name']}, fit from {new['n_comparisons']} comparisons: "
        f"{_pct(new['accuracy'])} of their held-out pairs{draws}, against "
        f"{_pct(new['accuracy_full_data'])} for a reward model trained on all "
        f"{new['n_full_data_pairs']} of theirs and {_pct(new['accuracy_pooled'])} for the "
        "pooled model."
    )
    c = p["criteria"]
    sentences.append(
        f"Adding harmlessness with the safety gate leaves {_pct(c['rude_rate']['combined'])} "
        f"rude completions (helpfulness alone: {_pct(c['rude_rate']['helpful'])}) at a "
        f"helpfulness win rate of {_pct(c['helpfulness_win_rate_vs_sft']['combined'])} "
        f"against SFT ({_pct(c['helpfulness_win_rate_vs_sft']['helpful'])})."
    )
    return "".join(f"<p class='headline'>{_e(s)}</p>" for s in sentences)


def _targets(m: Mapping[str, Any]) -> str:
    rows = [
        [_e(_TARGET_WORDS.get(k, k)) + f'<div class="key">{_e(k)}</div>', _e(t["target"]),
         _fmt(t["value"]), _badge(t["met"])]
        for k, t in m["targets"].items()
    ]  # fmt: skip
    return "<h3>Targets</h3>" + _table(["target", "needed", "reached", ""], rows, cls="targets")


def _plot_labelers(labelers: Mapping[str, Mapping[str, Any]]) -> str:
    """Bars per labeler: reward-model accuracy, personal against pooled."""
    names = list(labelers)
    fig = _figure(6.4, 3.2)
    ax = fig.add_subplot()
    x = range(len(names))
    width = 0.38
    pooled = [labelers[n]["rm_accuracy_pooled"] or 0 for n in names]
    personal = [labelers[n]["rm_accuracy_personal"] or 0 for n in names]
    ax.bar([i - width / 2 for i in x], pooled, width, label="pooled reward model", color="C7")
    ax.bar([i + width / 2 for i in x], personal, width, label="personal", color="C0")
    ax.set_xticks(list(x), [n + (" *" if labelers[n]["strong_taste"] else "") for n in names],
                  rotation=20)  # fmt: skip
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="0.6", lw=0.8, ls=":")
    ax.set_ylabel("held-out pairs ordered as the labeler did")
    ax.legend(loc="lower right", fontsize=8)
    return _img(_png(fig), "reward-model accuracy per labeler, personal against pooled")


def _labelers_table(labelers: Mapping[str, Mapping[str, Any]]) -> str:
    rows = []
    for name, r in labelers.items():
        rows.append([
            _e(name), _fmt(r["strong_taste"]), _fmt(r["n_held_out_pairs"]),
            _pct(r["rm_accuracy_pooled"]), _pct(r["rm_accuracy_personal"]),
            _pct(r.get("rm_accuracy_own")), _pct(r.get("policy_win_rate_own_utility")),
            _pct(r.get("policy_gold_win_rate_vs_sft")),
            _pct(r.get("conditioned_win_rate_own_utility")),
            _pct(r.get("adapter_vs_conditioned_own_utility")),
        ])  # fmt: skip
    header = ["labeler", "strong taste", "held-out pairs", "pooled RM", "personal RM",
              "own RM", "adapter vs generic (own utility)", "adapter vs SFT (gold)",
              "conditioned policy vs generic (own utility)",
              "adapter vs conditioned (own utility)"]  # fmt: skip
    return _table(header, rows)


def render_personal_report(metrics: Mapping[str, Any], out_path: str | Path) -> Path:
    """Write the personal demo's self-contained report atomically; returns the path."""
    from alignloop.io import atomic_write

    p = metrics["personal"]
    parts = [
        "<h1>alignloop demo: whose preferences</h1>",
        _section("In short", _headline(metrics) + _targets(metrics)),
        _section(
            "Each labeler",
            _plot_labelers(p["labelers"]) + _labelers_table(p["labelers"]),
            "* a strong taste. Accuracy on the labeler's own held-out pairs; the policies "
            "sample the held-out documents from one seed, so their comparisons are paired. "
            f"The generic policy beats SFT on {_pct(p['generic_gold_win_rate_vs_sft'])} "
            "by the gold judge.",
        ),
        _section(
            "The new user",
            _table(["figure", "value"], [[_e(k), _fmt(v)] for k, v in p["new_user"].items()]),
        ),
        _section(
            "Two criteria and the safety gate",
            _table(
                ["figure", "helpfulness only", "combined"],
                [
                    [_e(k), _fmt(v["helpful"]), _fmt(v["combined"])]
                    for k, v in p["criteria"].items()
                ],
            ),
        ),  # fmt: skip
    ]
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>alignloop personal demo</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out = Path(out_path)
    with atomic_write(out) as f:
        f.write(page)
    return out
