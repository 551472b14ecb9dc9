"""report.html: one self-contained page of a run, written for a reader with a minute.

The page opens with a headline in words (the main win rate with its 95% interval,
how many targets were met), the targets, and the key figures with what each means
and its scale; then the rounds, the win rates, the policies side by side with their
samples, over-optimization, the training curves, the reward model and the labelers.

Self-contained: the plots are PNG files drawn by matplotlib (the Agg canvas, no
pyplot, no display) at twice their shown size (sharp on a high-resolution screen) and
embedded as base64 `data:` URIs, the style sheet is inline, and the page links to
nothing, so it opens offline and can be mailed as one file. Every text that comes
from the data (completions are untrusted model output; prompts, policy names, config
values) is HTML-escaped; the page has no script.

The data, a JSON object; every section is optional and shown only when present
(unknown top-level keys are an error, so a misspelt section does not silently vanish):

    title        str, the page's heading (default "alignloop report")
    subtitle     str, a line under it (what was evaluated)
    headline     str, the opening sentence; by default one is written from the win
                 rates (the first not judged by the reward model), the rounds and the
                 held-out set's size in `metrics`
    names        {name: words}: how a policy or judge is called on the page
                 ("rlhf": "tuned (RLHF) policy"); the demo's names have defaults
    config       {name: value}: the run's options, shown folded
    metrics      {name: number | str | None}: every figure, in a folded table; the ones
                 the page knows (the demo's and `alignloop eval`'s keys) are also
                 shown at the top in words, with their scale
    targets      {name: {"target": ">= 0.75", "value", "met"}}: the demo's targets
                 (`alignloop.loop`'s metrics.json), a table of met / not met
    rounds       [{"round", "n_rankings", "win_rate_vs_sft", "win_rate_vs_reference",
                 "rm_gold_accuracy_on_policy", "kl_to_sft", "gold_mean", "seconds",
                 "side_by_side"?: [rows as below]}]: rounds of the loop. A table, and
                 with two rounds or more a plot of the figures by round
    ppo_log      [{"step", "ppo/reward_mean", "ppo/kl", ...}]: the lines of a PPO run's
                 metrics.jsonl (`alignloop.train.ppo`; the keys without their "ppo/"
                 prefix are accepted too). Plots by step: reward (and "rlhf_reward",
                 reward minus the KL penalty), KL to the reference, entropy, value
                 loss ("v_loss"), clip fraction ("clipfrac"), each where logged
    sft_log      the lines of an SFT run's metrics.jsonl ("sft/loss", "eval/eval_loss")
    rm_log       the lines of a reward-model run's metrics.jsonl ("rm/loss",
                 "rm/accuracy", "eval/accuracy")
    overoptimization  [{"kl", "proxy", "gold", "label"?}], in time order: proxy
                 (reward-model) and gold reward of the policy as PPO goes on; Gao et
                 al. 2022, "Scaling Laws for Reward Model Overoptimization". One plot
                 of both rewards' change since the first point against KL, the points
                 joined in time order
    win_rates    {name: {"wins", "ties", "losses", "n", "rate", "stderr", "a"?, "b"?,
                 "judge"?}} (`metrics.win_rate`): a table and a plot with 95% intervals,
                 a bar green where its interval lies above one half, red below
    before_after {policy: {"reward_mean", "gold_mean", "kl_mean", "length_mean" or
                 "length_words_mean" / "length_tokens_mean", "toxicity_rate", ...}}:
                 one row per policy (before first); a plot of the length, toxicity,
                 reward and gold figures present
    reward_model {"accuracy_labelers", "accuracy_gold", "n", ...}: numbers, one table
    agreement    `alignloop.feedback.agreement_report(...)`: its figures, per-labeler
                 agreement with the others' consensus, per-criterion figures
    side_by_side [{"prompt", <column>: text, ..., "scores"?: {<column>: {name: number}
                 or number}}]: the same prompts' completions side by side, e.g.
                 columns "reference", "sft", "rlhf"

`render_report(data, path)` writes the page (atomically); `alignloop report --data
report_data.json [--ppo-log ...] [--sft-log ...] [--rm-log ...] --out report.html`
does the same from files.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from alignloop.schema import SchemaError

__all__ = [
    "ReportData",
    "ReportDataError",
    "load_ppo_log",
    "load_report_data",
    "plots_in",
    "render_report",
]

Number = float | int


class ReportDataError(SchemaError):
    """The report's data does not follow the schema; each problem names its key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class WinRate(BaseModel):
    model_config = ConfigDict(extra="allow")
    wins: int
    ties: int
    losses: int
    n: int
    rate: float | None
    stderr: float | None = None
    a: str | None = None
    b: str | None = None
    judge: str | None = None

    def interval(self) -> tuple[float, float] | None:
        """The 95% interval of the rate (normal approximation), inside [0, 1]."""
        if self.rate is None or self.stderr is None:
            return None
        half = 1.96 * self.stderr
        return max(0.0, self.rate - half), min(1.0, self.rate + half)


class OverPoint(_Strict):
    kl: float
    proxy: float | None = None
    gold: float | None = None
    label: str | None = None


class Target(_Strict):
    target: str  # "<op> <bound>", as loop._targets writes it: ">= 0.75"
    value: Number | None = None
    met: bool


class SideBySideRow(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str
    scores: dict[str, dict[str, Number | None] | Number | None] = {}

    @model_validator(mode="after")
    def _columns_are_texts(self) -> SideBySideRow:
        for key, value in (self.model_extra or {}).items():
            if value is not None and not isinstance(value, str):
                raise ValueError(f"column {key!r} holds a {type(value).__name__}, not a text")
        return self

    def columns(self) -> dict[str, str | None]:
        """Column -> text (None: this policy has no completion for the prompt)."""
        return dict(self.model_extra or {})


class Round(BaseModel):
    """One round of the loop, as metrics.json's `rounds` gives it; further figures a
    round carries are kept and shown in the table."""

    model_config = ConfigDict(extra="allow")
    round: int
    n_rankings: int | None = None
    win_rate_vs_sft: float | None = None
    win_rate_vs_reference: float | None = None
    rm_gold_accuracy_on_policy: float | None = None
    kl_to_sft: float | None = None
    gold_mean: float | None = None
    seconds: float | None = None
    side_by_side: list[SideBySideRow] = []


class ReportData(_Strict):
    title: str = "alignloop report"
    subtitle: str | None = None
    headline: str | None = None
    names: dict[str, str] = {}
    config: dict[str, Any] = {}
    metrics: dict[str, Number | str | bool | None] = {}
    targets: dict[str, Target] = {}
    rounds: list[Round] = []
    ppo_log: list[dict[str, Any]] = []
    sft_log: list[dict[str, Any]] = []
    rm_log: list[dict[str, Any]] = []
    overoptimization: list[OverPoint] = []
    win_rates: dict[str, WinRate] = {}
    before_after: dict[str, dict[str, Number | None]] = {}
    reward_model: dict[str, Number | str | None] = {}
    agreement: dict[str, Any] = {}
    side_by_side: list[SideBySideRow] = []


def _validate(data: Mapping[str, Any]) -> ReportData:
    try:
        return ReportData.model_validate(dict(data))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            where = ".".join(str(part) for part in err["loc"]) or "<top>"
            problems.append(f"report data: {where}: {err['msg']}")
        raise ReportDataError(problems) from None


def load_ppo_log(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a PPO run's metrics.jsonl (or of any JSON-lines metrics log)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such metrics log")
    lines = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                try:
                    lines.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ReportDataError(f"{path}:{lineno}: not valid JSON: {e.msg}") from e
    return lines


def load_report_data(
    paths: Sequence[str | Path] = (),
    *,
    ppo_log: str | Path | None = None,
    sft_log: str | Path | None = None,
    rm_log: str | Path | None = None,
) -> dict[str, Any]:
    """The report data of JSON files merged in order (a later file's section replaces
    an earlier one's), with the lines of metrics logs as `ppo_log`, `sft_log` and
    `rm_log`."""
    data: dict[str, Any] = {}
    for path in map(Path, paths):
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such report data file")
        try:
            part = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ReportDataError(f"{path}:{e.lineno}: not valid JSON: {e.msg}") from e
        if not isinstance(part, dict):
            raise ReportDataError(f"{path}: expected a JSON object of report sections")
        try:
            _validate(part)
        except ReportDataError as e:
            raise ReportDataError([f"{path}: {p}" for p in e.problems]) from None
        data.update(part)
    for key, log in (("ppo_log", ppo_log), ("sft_log", sft_log), ("rm_log", rm_log)):
        if log is not None:
            data[key] = load_ppo_log(log)
    if not data:
        raise ReportDataError("no report data: give a data file or a metrics log")
    return data


# --- the metrics logs ------------------------------------------------------------------


def _series(
    log: Sequence[Mapping[str, Any]], name: str, prefix: str = "ppo", *, bare: bool = True
) -> tuple[list[float], list[float]]:
    """(steps, values) of metric `name` ("<prefix>/<name>", or "<name>" where `bare`)
    over the log's lines that have it as a number (the last line of a run only says
    why it stopped)."""
    steps, values = [], []
    for i, line in enumerate(log):
        value = line.get(f"{prefix}/{name}", line.get(name) if bare else None)
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(float(line.get("step", i + 1)))
            values.append(float(value))
    return steps, values


# --- words -----------------------------------------------------------------------------

# What the page calls the demo's policies and judges (`names` in the data adds or
# replaces names).
_NAMES = {
    "rlhf": "tuned policy",
    "sft": "supervised policy",
    "prompt_reference": "references",
    "gold": "hidden gold judge",
    "reward_model": "reward model",
}


def _namer(d: ReportData) -> Callable[[str | None], str]:
    names = {**_NAMES, **d.names}
    return lambda name: names.get(name or "", name or "?")


def _upper(words: str) -> str:
    """`words` with a capital first letter (the rest as it is)."""
    return words[:1].upper() + words[1:]


def _lower(words: str) -> str:
    """`words` with a small first letter, for the middle of a sentence."""
    return words[:1].lower() + words[1:]


def _possessive(words: str) -> str:
    """ "the policy's", "the references'"."""
    return words + ("'" if words.endswith("s") else "'s")


def _short(words: str) -> str:
    """A policy's name for a plot's tick: without "policy"."""
    return words.removesuffix(" policy")


class Figure(NamedTuple):
    """What a figure is, in words: its label, how its value is shown (`kind`, a key
    of `_KINDS`), what it means and its scale; `key`: shown at the top of the page."""

    label: str
    kind: str
    meaning: str
    key: bool = False


_SHARE = "0 to 1, shown as a percentage"
_WIN = "share of paired samples the {judge} prefers; ties count half. 0.5: no better"
_KINDS: dict[str, Callable[[float], str]] = {
    "share": lambda v: f"{v:.1%}",
    "points": lambda v: f"{100 * v:+.1f} points",
    "times": lambda v: f"{v:.1f}x",
    "nats": lambda v: f"{v:.2f} nats",
    "score": lambda v: f"{v:.3f}",
    "words": lambda v: f"{v:.1f} words",
    "count": lambda v: f"{round(v):,}",
    "seconds": lambda v: f"{v:.0f} s ({v / 60:.1f} min)",
    "loss": lambda v: f"{v:.3f}",
}


def _policy_figures(a: str, what: str, name) -> Figure | None:
    """The figures evaluation gives each policy (`what`), for policy `a`."""
    policy = name(a)
    if what == "gold_mean":
        return Figure(
            f"Gold reward, {policy}", "score",
            "mean score of the hidden gold judge (its own points; higher is better)",
        )  # fmt: skip
    if what == "reward_mean":
        return Figure(
            f"Reward-model score, {policy}", "score",
            "mean score of the reward model PPO optimized (normalized: its training "
            "completions score mean 0, standard deviation 1)",
        )  # fmt: skip
    if what in ("toxicity_rate", "toxicity"):
        return Figure(
            f"Rude completions, {policy}", "share",
            f"share of completions with a rude word ({_SHARE}; lower is better)",
        )  # fmt: skip
    if what in ("length_words", "length_words_mean", "length_mean"):
        return Figure(f"Length, {policy}", "words", "mean length of a completion")
    if what in ("kl", "kl_mean"):
        return Figure(
            f"KL to the start, {policy}", "nats",
            "how far the policy moved: KL(policy || SFT) summed over a completion's tokens, "
            "averaged (0: unchanged)",
        )  # fmt: skip
    return None


_FIXED = {
    "toxicity_reduction": Figure(
        "Fewer rude completions",
        "times",
        "the SFT policy's rate of rude completions over the tuned policy's (10x: a tenth; "
        "with none left, one is counted: a lower bound)",
    ),
    "rm_gold_accuracy": Figure(
        "Reward model agrees with the gold judge",
        "share",
        "share of held-out pairs the reward model orders as the gold judge does (0.5: chance)",
        key=True,
    ),
    "rm_labeler_accuracy": Figure(
        "Reward model agrees with the labelers",
        "share",
        "share of held-out labeler pairs the reward model orders as the labeler did",
        key=True,
    ),
    "labeler_pairwise_agreement": Figure(
        "Labelers agree with each other",
        "share",
        "share of completion pairs two labelers of a prompt order the same way "
        "(InstructGPT's labelers: about 73%)",
        key=True,
    ),
    "labeler_kendall_w": Figure(
        "Labelers' Kendall's W", "score", "agreement of whole rankings, 0 (none) to 1 (all)"
    ),
    "labeler_krippendorff_alpha": Figure(
        "Labelers' Krippendorff's alpha",
        "score",
        "agreement beyond chance, 1 perfect, 0 chance level",
    ),
    "rm_gold_minus_labeler_agreement": Figure(
        "Reward model's gold accuracy over the labelers' agreement",
        "points",
        "above 0: the reward model agrees with the gold judge more often than two "
        "labelers agree with each other",
    ),
    "sft_eval_loss": Figure(
        "SFT held-out loss", "loss", "cross-entropy per token on held-out documents (nats)"
    ),
    "ppo_steps": Figure("PPO steps", "count", "optimizer rounds of PPO"),
    "ppo_episodes": Figure("PPO episodes", "count", "completions PPO sampled and scored"),
    "n_rankings": Figure("Rankings", "count", "rankings the labelers gave"),
    "n_pairs": Figure("Preference pairs", "count", "pairs the rankings give"),
    "n_eval_documents": Figure("Held-out documents", "count", "documents nobody trained on"),
    "eval_samples_per_document": Figure(
        "Samples per document", "count", "completions each policy wrote per held-out document"
    ),
    "demo_seconds": Figure("Time", "seconds", "wall-clock time of the whole run"),
    "eval/n_prompts": Figure("Prompts", "count", "prompts evaluated"),
}


def _win_figure(a: str, b: str, judge: str, name) -> Figure:
    return Figure(
        _upper(f"the {name(a)} beats the {name(b)}, by the {name(judge)}"), "share",
        _WIN.format(judge=name(judge)),
    )  # fmt: skip


def _describe(key: str, name) -> Figure | None:
    """What the figure `key` (the demo's or `alignloop eval`'s) is, or None."""
    if key in _FIXED:
        return _FIXED[key]
    if m := re.fullmatch(r"win_rate_(\w+?)_vs_(\w+?)(_by_reward_model)?", key):
        b = "prompt_reference" if m[2] == "reference" else m[2]  # the demo's short name
        return _win_figure(m[1], b, "reward_model" if m[3] else "gold", name)
    if m := re.fullmatch(r"eval/win_rate/(\w+)_vs_(\w+)/(\w+)", key):
        return _win_figure(m[1], m[2], m[3], name)
    if m := re.fullmatch(r"(gold_mean|reward_mean|toxicity_rate|length_words)_(\w+)", key):
        return _policy_figures(m[2], m[1], name)
    if m := re.fullmatch(r"kl_(\w+?)_to_(\w+)", key):
        return _policy_figures(m[1], "kl", name)
    if m := re.fullmatch(r"eval/(\w+)/(\w+)", key):
        return _policy_figures(m[1], m[2], name)
    return None


def _show(value: Any, kind: str | None) -> str:
    """A figure as escaped text, in its kind's form where it has one."""
    if kind and isinstance(value, int | float) and not isinstance(value, bool):
        if not math.isnan(value):
            return _e(_KINDS[kind](value))
    return _fmt(value)


def _pct(value: float, digits: int = 0) -> str:
    return f"{value:.{digits}%}"


# --- plots -----------------------------------------------------------------------------

# Matplotlib draws at 100 dots per inch; the PNG has twice as many, and the page shows
# it at the 100-dpi size, so it stays sharp on a high-resolution screen.
_DPI, _SCALE = 100, 2
GOOD, BAD, NEUTRAL = "#2e7d32", "#c62828", "#78909c"  # colours of a result's meaning


class Plot(NamedTuple):
    uri: str  # data:image/png;base64,...
    width: int  # CSS pixels
    height: int


def _figure(width: float = 6.4, height: float = 3.6):
    """A figure on the Agg canvas, with no pyplot state (safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure as MplFigure

    fig = MplFigure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> Plot:
    buffer = io.BytesIO()
    # No "Software" text chunk: the PNG carries nothing but the picture.
    fig.savefig(buffer, format="png", dpi=_DPI * _SCALE, metadata={"Software": None})
    width, height = fig.get_size_inches() * _DPI
    uri = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    return Plot(uri, round(width), round(height))


def _smooth(values: Sequence[float], window: int) -> list[float]:
    """Trailing moving average (the first points average what there is)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def _curve(ax, steps, values, *, label: str | None = None, color: str = "C0") -> None:
    """A logged metric by step; a long, noisy one as faint points under its moving
    average (over a twentieth of the run)."""
    if len(values) < 40:
        ax.plot(steps, values, marker=".", color=color, label=label)
        return
    ax.plot(steps, values, color=color, alpha=0.25, linewidth=1)
    ax.plot(steps, _smooth(values, max(2, len(values) // 20)), color=color, label=label)


# The training curves: (plot name, log, metric, prefix, title, y label, more lines).
class Curve(NamedTuple):
    name: str
    log: str  # ReportData field
    metric: str
    prefix: str
    title: str
    ylabel: str


_CURVES = (
    Curve("sft_loss", "sft_log", "loss", "sft", "SFT loss", "cross-entropy per token (nats)"),
    Curve("rm_loss", "rm_log", "loss", "rm", "Reward-model loss", "pairwise loss (nats)"),
    Curve("rm_accuracy", "rm_log", "accuracy", "rm", "Reward-model accuracy", "pairs right"),
    Curve("ppo_reward", "ppo_log", "reward_mean", "ppo", "PPO reward", "reward-model score"),
    Curve("ppo_kl", "ppo_log", "kl", "ppo", "KL to the reference", "nats per completion"),
    Curve("ppo_entropy", "ppo_log", "entropy", "ppo", "Policy entropy", "nats per token"),
    Curve("ppo_value_loss", "ppo_log", "v_loss", "ppo", "Value loss", "squared error"),
    Curve("ppo_clipfrac", "ppo_log", "clipfrac", "ppo", "Clip fraction", "share of tokens clipped"),
)
# Held-out figures drawn over a curve: {curve name: (metric, prefix, label)}.
_HELD_OUT = {
    "sft_loss": ("eval_loss", "eval", "held-out"),
    "rm_accuracy": ("accuracy", "eval", "held-out"),
    "rm_loss": ("loss", "eval", "held-out"),
}


def _reward_parts(log: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(metric, label) of each part of a combined PPO reward that the log has, in the
    order they first appear: a criterion head's normalized score (`ppo/score_<head>`)
    and a user's reward on their own episodes (`ppo/score_user_<name>`, train/ppo.py's
    USER_FIGURE). A personal model's reward features (`score_feature_<i>`) mean nothing
    one by one and are left out."""
    keys = dict.fromkeys(k for line in log for k in line if k.startswith("ppo/score_"))
    parts = []
    for key in keys:
        name = key.removeprefix("ppo/score_")
        if re.fullmatch(r"feature_\d+", name):
            continue
        label = f"{name[5:]}'s reward" if name.startswith("user_") else f"{name} head"
        parts.append((key.removeprefix("ppo/"), label))
    return parts


def _held_out_parts(log: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """(metric, label) of the held-out accuracy of each criterion where a reward
    model's log has two or more (`eval/by_criterion/<name>/accuracy`: each pair on its
    own head)."""
    prefix, suffix = "eval/by_criterion/", "/accuracy"
    keys = dict.fromkeys(k for line in log for k in line
                         if k.startswith(prefix) and k.endswith(suffix))  # fmt: skip
    if len(keys) < 2:
        return []
    return [(k.removeprefix("eval/"), f"held-out, {k[len(prefix):-len(suffix)]}") for k in keys]


def _plot_curve(d: ReportData, c: Curve) -> Plot | None:
    log = getattr(d, c.log)
    steps, values = _series(log, c.metric, c.prefix)
    if not steps:
        return None
    fig = _figure(3.5, 2.6)
    ax = fig.add_subplot()
    _curve(ax, steps, values, label="score" if c.name == "ppo_reward" else "training")
    legend = False
    if c.name == "ppo_reward":
        rl_steps, rl = _series(log, "rlhf_reward")
        if rl_steps:
            _curve(ax, rl_steps, rl, label="score - beta * KL", color="C1")
            legend = True
        for i, (key, label) in enumerate(_reward_parts(log)):  # several heads or users
            _curve(ax, *_series(log, key), label=label, color=f"C{i + 4}")
            legend = True
    if c.name in _HELD_OUT:
        metric, prefix, label = _HELD_OUT[c.name]
        # "eval/loss" only: a bare "loss" is the training loss
        h_steps, held = _series(log, metric, prefix, bare=False)
        if held:
            ax.plot(h_steps, held, "D", color="C3", label=label, markersize=6)
            legend = True
    if c.name == "rm_accuracy":  # a reward model of several criteria: each on its own head
        for i, (key, label) in enumerate(_held_out_parts(log)):
            h_steps, held = _series(log, key, "eval")
            ax.plot(h_steps, held, "o", color=f"C{i + 4}", label=label, markersize=4)
            legend = True
        ax.axhline(0.5, color="black", linestyle="--", linewidth=0.8)  # chance
    ax.set(xlabel=f"{c.prefix.upper()} step", ylabel=c.ylabel, title=c.title)
    if legend:
        ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return _png(fig)


def _plot_rounds(rounds: Sequence[Round], before_after) -> Plot | None:
    """Win rates and reward-model accuracy (shares, one axis) and the gold reward (its
    own axis, beside), by round; only with two rounds or more."""
    if len(rounds) < 2:
        return None
    xs = [r.round for r in rounds]
    fig = _figure(9.0, 3.4)
    left, right = fig.subplots(1, 2, sharex=True, width_ratios=[3, 2])
    lowest = 1.0
    for field, label, color, marker in (
        ("win_rate_vs_sft", "beats SFT", GOOD, "o"),
        ("win_rate_vs_reference", "beats the references", "C0", "s"),
        ("rm_gold_accuracy_on_policy", "reward model agrees with gold\n(on the policy's samples)",
         "C4", "^"),
    ):  # fmt: skip
        pts = [(x, getattr(r, field)) for x, r in zip(xs, rounds, strict=True)]
        pts = [(x, y) for x, y in pts if y is not None]
        if pts:
            left.plot(*zip(*pts, strict=True), marker=marker, color=color, label=label)
            lowest = min(lowest, *(y for _, y in pts))
            x, y = pts[-1]
            left.annotate(_pct(y), (x, y), textcoords="offset points", xytext=(6, -3),
                          fontsize=9, color=color)  # fmt: skip
    left.axhline(0.5, color="black", linestyle="--", linewidth=0.8)
    # From 0.3 (what a round shows: the gain above one half) unless a share is lower.
    bottom = 0.3 if lowest >= 0.32 else max(-0.02, lowest - 0.05)
    left.set(xlabel="round", ylabel="share (0.5: no better / chance)", ylim=(bottom, 1.0),
             title="Win rates and reward-model accuracy")  # fmt: skip
    left.legend(loc="best", fontsize=8)
    left.grid(alpha=0.3)
    gold = [(x, r.gold_mean) for x, r in zip(xs, rounds, strict=True) if r.gold_mean is not None]
    if gold:
        right.plot(*zip(*gold, strict=True), marker="o", color="C1", label="tuned policy")
    for policy, style in (("sft", "--"), ("prompt_reference", ":")):
        value = before_after.get(policy, {}).get("gold_mean")
        if value is not None:
            right.axhline(value, color="gray", linestyle=style, linewidth=1,
                          label="SFT" if policy == "sft" else "references")  # fmt: skip
    right.set(xlabel="round", ylabel="gold reward (judge's points)", title="Gold reward")
    right.legend(loc="best", fontsize=8)
    right.grid(alpha=0.3)
    left.set_xticks(xs)
    return _png(fig)


def _plot_overoptimization(points: Sequence[OverPoint]) -> Plot | None:
    """Both rewards' change since the first point, on one axis: against KL (left; the
    points joined in time order, the end a large marker) and in time order (right),
    sharing the reward axis."""
    series = []
    for name, color, marker in (("proxy", "C0", "o"), ("gold", "C1", "s")):
        pts = [(i, p.kl, getattr(p, name)) for i, p in enumerate(points)]
        pts = [pt for pt in pts if pt[2] is not None]
        if pts:
            series.append((name, color, marker, pts))
    if not series:
        return None
    fig = _figure(10.0, 3.8)
    by_kl, by_time = fig.subplots(1, 2, sharey=True, width_ratios=[3, 2])
    labels = {"proxy": "proxy (reward model)", "gold": "gold judge"}
    for name, color, marker, pts in series:
        start = pts[0][2]
        order = [i + 1 for i, _, _ in pts]
        xs = [kl for _, kl, _ in pts]
        ys = [y - start for _, _, y in pts]
        for ax, x in ((by_kl, xs), (by_time, order)):
            ax.plot(x, ys, marker=marker, color=color, label=labels[name], linewidth=1.2,
                    markersize=5)  # fmt: skip
            ax.plot(x[-1:], ys[-1:], marker=marker, color=color, markersize=11)  # the end
        if name == series[0][0]:  # both start at 0: one "start" says it
            by_kl.annotate("start", (xs[0], ys[0]), textcoords="offset points", xytext=(6, 6),
                           fontsize=9)  # fmt: skip
        by_kl.annotate("end", (xs[-1], ys[-1]), textcoords="offset points", xytext=(-8, 8),
                       fontsize=9, color=color, ha="right")  # fmt: skip
    for ax in (by_kl, by_time):
        ax.axhline(0, color="black", linewidth=0.8)
        ax.grid(alpha=0.3)
    by_kl.set(
        xlabel="KL(policy || reference), nats per completion",
        ylabel="reward gained since the start",
        title="Against how far the policy moved",
    )
    by_kl.legend(loc="upper left")
    ticks = [i + 1 for i in range(len(points))]
    names = [
        re.sub(r"^steps\s+", "", p.label) if p.label else str(i)
        for i, p in zip(ticks, points, strict=True)
    ]
    by_time.set_xticks(ticks, names, rotation=45, ha="right", fontsize=8)
    by_time.set(xlabel="PPO steps (each point: a stretch of steps)", title="In time order")
    return _png(fig)


def _judged_above(wr: WinRate) -> str:
    """A win rate's colour by what it means: its interval above one half (a win),
    below (a loss), or across it (no difference shown)."""
    interval = wr.interval()
    low, high = interval if interval else (wr.rate, wr.rate)
    if low is not None and low > 0.5:
        return GOOD
    if high is not None and high < 0.5:
        return BAD
    return NEUTRAL


def _plot_win_rates(win_rates: Mapping[str, WinRate], name) -> Plot | None:
    shown = [(key, wr) for key, wr in win_rates.items() if wr.rate is not None]
    if not shown:
        return None
    fig = _figure(7.5, max(1.8, 0.55 * len(shown) + 1.1))
    ax = fig.add_subplot()
    y = list(range(len(shown)))
    rates = [wr.rate for _, wr in shown]
    errors = [1.96 * (wr.stderr or 0.0) for _, wr in shown]
    colors = [_judged_above(wr) for _, wr in shown]
    ax.barh(y, rates, xerr=errors, color=colors, alpha=0.85, capsize=3)
    for yi, rate in zip(y, rates, strict=True):
        ax.annotate(_pct(rate), (rate, yi), textcoords="offset points", xytext=(8, 4), fontsize=9)
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)

    def tick(key: str, wr: WinRate) -> str:
        if wr.a is None or wr.b is None:
            return key
        judge = f"\nby the {name(wr.judge)}" if wr.judge else ""
        return f"{_short(name(wr.a))} vs {_short(name(wr.b))}{judge}"

    ax.set_yticks(y, [tick(k, wr) for k, wr in shown], fontsize=9)
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="win rate (ties count half), with its 95% interval")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# Figures of before_after that get a panel: (key, panel title); the first length key
# present is drawn.
_LENGTH_KEYS = ("length_mean", "length_words_mean", "length_tokens_mean")
_LENGTH_TITLES = dict(
    zip(_LENGTH_KEYS, ("length", "length (words)", "length (tokens)"), strict=True)
)
_PANELS = (
    ("toxicity_rate", "rude completions (share)"),
    ("reward_mean", "reward-model score"),
    ("gold_mean", "gold reward"),
)


def _before_after_panels(table: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    present = {k for row in table.values() for k, v in row.items() if v is not None}
    lengths = [(k, _LENGTH_TITLES[k]) for k in _LENGTH_KEYS if k in present]
    return lengths[:1] + [(k, title) for k, title in _PANELS if k in present]


def _plot_before_after(table: Mapping[str, Mapping[str, Any]], name) -> Plot | None:
    panels = _before_after_panels(table)
    if not panels:
        return None
    policies = list(table)
    fig = _figure(width=min(12.0, 2.8 * len(panels) + 0.6), height=3.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(policies))]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [table[p].get(key) for p in policies]
        heights = [0.0 if v is None else v for v in values]
        ax.bar(range(len(policies)), heights, color=colors)
        for x, v in enumerate(values):
            if v is not None:
                ax.annotate(f"{v:.3g}", (x, v), textcoords="offset points", xytext=(0, 2),
                            ha="center", va="bottom" if v >= 0 else "top", fontsize=8)  # fmt: skip
        ax.set_xticks(range(len(policies)), [_short(name(p)) for p in policies], rotation=20,
                      ha="right", fontsize=8)  # fmt: skip
        ax.set_title(title, fontsize=10)
        ax.axhline(0, color="black", linewidth=0.6)
        ax.grid(axis="y", alpha=0.3)
        ax.margins(y=0.15)
    return _png(fig)


def _plot_checks(d: ReportData) -> list[tuple[str, Callable[[], bool]]]:
    """Each plot's name and whether `d` has its data, in page order."""
    curves = [
        (c.name, lambda c=c: bool(_series(getattr(d, c.log), c.metric, c.prefix)[0]))
        for c in _CURVES
    ]
    return [
        ("rounds", lambda: len(d.rounds) >= 2),
        ("win_rates", lambda: any(wr.rate is not None for wr in d.win_rates.values())),
        ("before_after", lambda: bool(_before_after_panels(d.before_after))),
        (
            "overoptimization",
            lambda: any(p.proxy is not None or p.gold is not None for p in d.overoptimization),
        ),
        *curves,
    ]


def plots_in(data: Mapping[str, Any]) -> list[str]:
    """Names of the plots `render_report` draws for `data`, in page order."""
    d = _validate(data)
    return [name for name, present in _plot_checks(d) if present()]


# --- HTML ------------------------------------------------------------------------------


def _e(value: Any) -> str:
    """Any value as escaped HTML text."""
    return html.escape(str(value), quote=True)


def _fmt(value: Any) -> str:
    """A figure as escaped text: 4 significant digits, "-" for missing."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, dict | list):
        return _e(json.dumps(value, ensure_ascii=False))
    return _e(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    """A table; `header` is plain text (escaped here), cells are HTML already."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    attr = f' class="{cls}"' if cls else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _kv_table(values: Mapping[str, Any]) -> str:
    return _table(["figure", "value"], [[_e(k), _fmt(v)] for k, v in values.items()])


def _img(plot: Plot, alt: str) -> str:
    return f'<img src="{plot.uri}" width="{plot.width}" height="{plot.height}" alt="{_e(alt)}">'


def _plot_above(plot: Plot | None, alt: str, body: str) -> str:
    """A section's body under its plot, where there is one (too little data: none)."""
    return _img(plot, alt) + body if plot else body


def _section(title: str, body: str, note: str = "") -> str:
    """A section; its id is its title's words joined by "-" ("win-rates")."""
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    anchor = "-".join(re.findall(r"[a-z0-9]+", title.lower()))
    return f'<section id="{anchor}"><h2>{_e(title)}</h2>{note_html}{body}</section>'


def _badge(met: bool | None, yes: str = "met", no: str = "not met") -> str:
    if met is None:
        return '<span class="badge unknown">-</span>'
    return f'<span class="badge {"good" if met else "bad"}">{_e(yes if met else no)}</span>'


# --- the top: headline, targets, key figures -------------------------------------------


def _headline_win_rate(win_rates: Mapping[str, WinRate]) -> WinRate | None:
    """The comparison the headline gives: the first rate not judged by the reward
    model (the proxy PPO optimized), else the first rate."""
    rated = [wr for wr in win_rates.values() if wr.rate is not None]
    return next((wr for wr in rated if wr.judge != "reward_model"), rated[0] if rated else None)


def _eval_set(d: ReportData, wr: WinRate) -> str:
    """What the rates were measured on, in words."""
    n_docs, per_doc = d.metrics.get("n_eval_documents"), d.metrics.get("eval_samples_per_document")
    if isinstance(n_docs, int):
        each = f", {per_doc} samples each" if isinstance(per_doc, int) and per_doc > 1 else ""
        return f"{n_docs:,} documents nobody trained on{each}"
    n_prompts = d.metrics.get("eval/n_prompts")
    if isinstance(n_prompts, int):
        return f"{n_prompts:,} prompts, {wr.n:,} paired samples"
    return f"{wr.n:,} paired samples"


def _rate_words(wr: WinRate) -> str:
    interval = wr.interval()
    assert wr.rate is not None
    if interval is None:
        return _pct(wr.rate)
    return f"{_pct(wr.rate)} (95% interval {_pct(interval[0])} to {_pct(interval[1])})"


def _headline(d: ReportData, name) -> str:
    """The opening sentence (large), then what else a reader should know first: the
    other comparisons by the same judge, the proxy's view, the targets; as HTML."""
    lead, more = "", []
    wr = _headline_win_rate(d.win_rates)
    if d.headline:
        lead = _e(d.headline)
    elif wr is not None and wr.rate is not None and wr.a and wr.b:
        after = ""
        if d.rounds:
            n = len(d.rounds)
            after = f"After {n} round{'s' if n != 1 else ''} of RLHF, the "
        subject = f"{after}{name(wr.a)}" if after else f"The {name(wr.a)}"
        only = "" if wr.rate >= 0.5 else "only "  # a loss is said as one
        interval = wr.interval()
        within = f"95% interval {_pct(interval[0])} to {_pct(interval[1])}, " if interval else ""
        # one decimal, as the targets show their bounds: 0.748 is 74.8%, not a "75%"
        # beside a missed "at least 75.0%"
        lead = (
            f"{_e(_possessive(subject))} completions beat the {_e(_possessive(name(wr.b)))} "
            f"{only}<strong>{_e(_pct(wr.rate, 1))}</strong> of the time on "
            f"{_e(_eval_set(d, wr))} "
            f"({_e(within)}by the {_e(name(wr.judge))}; ties count half)."
        )
    if wr is not None and wr.rate is not None and not d.headline:
        same_judge = [o for o in d.win_rates.values() if o.judge == wr.judge and o is not wr]
        for o in sorted(same_judge, key=lambda o: o.a != wr.a):  # the headline's policy first
            if o.rate is not None and o.a and o.b:
                more.append(_e(f"The {name(o.a)} against the {name(o.b)}: {_rate_words(o)}."))
        proxy = next(
            (o for o in d.win_rates.values()
             if o.judge == "reward_model" and (o.a, o.b) == (wr.a, wr.b) and o.rate is not None),
            None,
        )  # fmt: skip
        if proxy is not None and proxy.rate is not None and wr.judge != "reward_model":
            gap = (
                f", more than the {name(wr.judge)}'s {_pct(wr.rate)}: the reward model "
                "overrates it (a policy tuned on it learns its errors)"
                if proxy.rate > wr.rate
                else ""
            )
            more.append(_e(
                f"By the reward model, the {name(wr.a)} wins {_pct(proxy.rate)} of the "
                f"time{gap}."
            ))  # fmt: skip
    if d.targets:
        met = [n for n, t in d.targets.items() if t.met]
        missed = [_lower(_target_label(n, name)) for n, t in d.targets.items() if not t.met]
        if not missed:
            more.insert(0, f'<span class="good">All {len(met)} targets met.</span>')
        else:
            more.insert(
                0,
                f'<span class="bad">{len(met)} of {len(d.targets)} targets met</span>; '
                f"not met: {_e('; '.join(missed))}.",
            )
    out = f'<p class="headline">{lead}</p>' if lead else ""
    if more:
        out += '<ul class="also">' + "".join(f"<li>{m}</li>" for m in more) + "</ul>"
    return out


def _target_label(key: str, name) -> str:
    figure = _describe(key, name)
    return figure.label if figure else key


def _target_bound(target: str, kind: str | None) -> str:
    """The bound ">= 0.75" in words and in the figure's form: "at least 75.0%"."""
    m = re.fullmatch(r"\s*(>=|<=|>|<|==)\s*(-?[0-9.eE+-]+)\s*", target)
    if not m:
        return _e(target)
    words = {">=": "at least", "<=": "at most", ">": "above", "<": "below", "==": "exactly"}
    return f"{words[m[1]]} {_show(float(m[2]), kind)}"


def _targets_table(targets: Mapping[str, Target], name) -> str:
    rows = []
    for key, t in targets.items():
        figure = _describe(key, name)
        kind = figure.kind if figure else None
        rows.append([
            _e(figure.label if figure else key) + f'<div class="key">{_e(key)}</div>',
            _target_bound(t.target, kind),
            _show(t.value, kind),
            _badge(t.met),
        ])  # fmt: skip
    return "<h3>Targets</h3>" + _table(["target", "needed", "reached", ""], rows, cls="targets")


def _key_figures(d: ReportData, name) -> str:
    rows = []
    for key, value in d.metrics.items():
        figure = _describe(key, name)
        if figure is not None and figure.key and value is not None:
            rows.append([_e(figure.label), _show(value, figure.kind), _e(figure.meaning)])
    if not rows:
        return ""
    return "<h3>Key figures</h3>" + _table(
        ["figure", "value", "what it means, its scale"], rows, cls="figures"
    )


def _all_figures(d: ReportData, name) -> str:
    rows = []
    for key, value in d.metrics.items():
        figure = _describe(key, name)
        rows.append([
            _e(key), _show(value, figure.kind if figure else None),
            _e(figure.meaning) if figure else "",
        ])  # fmt: skip
    return (
        f"<details><summary>All {len(rows)} figures</summary>"
        + _table(["figure", "value", "what it means"], rows, cls="figures")
        + "</details>"
    )


# The policies table's columns: (before_after keys, the first present is shown; label;
# kind; scale).
_POLICY_COLUMNS = (
    (("gold_mean",), "gold reward", "score", "hidden judge's points, higher is better"),
    (("reward_mean",), "reward-model score", "score", "normalized: training completions 0 ± 1"),
    (("toxicity_rate",), "rude completions", "share", "share with a rude word, lower is better"),
    (_LENGTH_KEYS, "length", None, "mean, in words (or tokens)"),
    (("kl_mean",), "KL to the start", "nats", "per completion, 0: unchanged"),
)


def _policies_table(table: Mapping[str, Mapping[str, Any]], name) -> str:
    """Each policy's means on the held-out prompts, one row each, with each column's
    scale under its name."""
    present = {k for row in table.values() for k, v in row.items() if v is not None}
    columns = []
    for keys, label, kind, scale in _POLICY_COLUMNS:
        key = next((k for k in keys if k in present), None)
        if key is not None:
            columns.append((key, label, kind, scale))
    if not columns:
        return ""
    head = "<th>policy</th>" + "".join(
        f'<th>{_e(label)}<div class="scale">{_e(scale)}</div></th>'
        for _, label, _, scale in columns
    )
    body = "".join(
        f"<tr><td>{_e(_upper(name(p)))}</td>"
        + "".join(f"<td>{_show(row.get(k), kind)}</td>" for k, _, kind, _ in columns)
        + "</tr>"
        for p, row in table.items()
    )
    return (
        "<h3>The policies on the held-out prompts</h3>"
        f'<table class="policies"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'
    )


def _top_section(d: ReportData, name) -> str:
    body = _headline(d, name)
    if d.targets:
        body += _targets_table(d.targets, name)
    if d.before_after:
        body += _policies_table(d.before_after, name)
    if d.metrics:
        body += _key_figures(d, name) + _all_figures(d, name)
    return _section("Headline figures", body)


# --- the other sections ----------------------------------------------------------------


_ROUND_COLUMNS = (
    ("n_rankings", "rankings", "count"),
    ("win_rate_vs_sft", "beats SFT", "share"),
    ("win_rate_vs_reference", "beats the references", "share"),
    ("rm_gold_accuracy_on_policy", "reward model agrees with gold, on the policy's samples",
     "share"),
    ("kl_to_sft", "KL to SFT", "nats"),
    ("gold_mean", "gold reward", "score"),
    ("seconds", "time", "seconds"),
)  # fmt: skip


def _round_setup(config: dict[str, Any]) -> str:
    """How the rounds were run, in words, from the loop's keys where the report's
    config has them: ", and runs PPO" plus where it starts and its KL's reference."""
    rm = {"previous": " (from the last round's reward model)", "scratch": " (each anew)"}
    start = {"previous": " from the last round's policy", "start": " from the start policy"}
    kl = {"sft": ", the KL to the start policy", "previous": ", the KL to the last round's policy"}
    return (rm.get(str(config.get("rm_init")), "") + ", and runs PPO"
            + start.get(str(config.get("ppo_init")), "")
            + kl.get(str(config.get("reference")), ""))  # fmt: skip


def _rounds_section(d: ReportData) -> str:
    extra = list(dict.fromkeys(
        k for r in d.rounds for k, v in (r.model_extra or {}).items()
        if not isinstance(v, dict | list)
    ))  # fmt: skip
    header = ["round"] + [label for _, label, _ in _ROUND_COLUMNS] + extra
    rows = []
    for r in d.rounds:
        cells = [_e(r.round)] + [_show(getattr(r, f), kind) for f, _, kind in _ROUND_COLUMNS]
        rows.append(cells + [_fmt((r.model_extra or {}).get(k)) for k in extra])
    body = _table(header, rows, cls="rounds")
    alt = "win rates, reward-model accuracy and gold reward by round"
    body = _plot_above(_plot_rounds(d.rounds, d.before_after), alt, body)
    n = len(d.rounds)
    what = (
        "One round of the loop: it samples from the start policy, collects rankings of those "
        "samples, trains the reward model on them and runs PPO (the plot of rounds comes "
        "with two rounds or more)."
        if n == 1
        else f"{n} rounds of the loop: each samples from the current policy, collects rankings "
        f"of those samples, trains the reward model on all pairs so far{_round_setup(d.config)}."
    )
    return _section(
        "Rounds",
        body,
        what + " Win rates by the gold judge on held-out documents (0.5: no better); "
        "the reward model's accuracy on the new policy's own samples (0.5: chance) shows "
        "whether it still knows where the policy now is.",
    )


def _win_rate_section(win_rates: Mapping[str, WinRate], name) -> str:
    rows = []
    for key, wr in win_rates.items():
        interval = wr.interval()
        shown = "-" if interval is None else f"{interval[0]:.1%} to {interval[1]:.1%}"
        what = f"{name(wr.a)} vs {name(wr.b)}" if wr.a and wr.b else key
        colour = {GOOD: "good", BAD: "bad", NEUTRAL: "neutral"}[_judged_above(wr)]
        rate = "-" if wr.rate is None else f'<span class="{colour}">{wr.rate:.1%}</span>'
        rows.append([
            _e(what) + f'<div class="key">{_e(key)}</div>', _e(name(wr.judge) if wr.judge else "-"),
            rate, _e(shown), _fmt(wr.wins), _fmt(wr.ties), _fmt(wr.losses), _fmt(wr.n),
        ])  # fmt: skip
    body = _table(
        ["comparison", "judge", "win rate", "95% interval", "wins", "ties", "losses", "pairs"], rows
    )
    body = _plot_above(_plot_win_rates(win_rates, name), "win rates", body)
    return _section(
        "Win rates",
        body,
        "The share of paired completions (the same prompt) where the first policy's scored "
        "higher under the judge; ties count half. 50% (the dashed line): no better. Green: "
        "the 95% interval lies above 50%, a win; red: below, a loss; grey: no difference "
        "shown.",
    )


def _before_after_section(table: Mapping[str, Mapping[str, Any]], name) -> str:
    keys = list(dict.fromkeys(k for row in table.values() for k in row))
    rows = [[_e(name(p))] + [_fmt(row.get(k)) for k in keys] for p, row in table.items()]
    body = f"<details><summary>The figures</summary>{_table(['policy', *keys], rows)}</details>"
    body = _plot_above(_plot_before_after(table, name), "before and after", body)
    return _section(
        "Before and after",
        body,
        "Means over the held-out samples of each policy. Gold reward: the hidden judge's "
        "points, higher is better; reward-model score: normalized to mean 0, standard "
        "deviation 1 on its training completions; rude completions: a share, lower is "
        "better; KL to the start, in nats per completion.",
    )


def _overoptimization_section(points: Sequence[OverPoint]) -> str:
    body = _plot_above(_plot_overoptimization(points), "gold and proxy reward against KL", "")
    first = points[0] if points else None
    rows = []
    for p in points:
        gains = [
            _show(None if v is None or v0 is None else v - v0, "score")
            for v, v0 in ((p.proxy, first.proxy), (p.gold, first.gold))
        ]
        rows.append([_e(p.label or ""), _fmt(p.kl), _fmt(p.proxy), _fmt(p.gold), *gains])
    body += (
        "<details><summary>The points, in time order</summary>"
        + _table(["when", "KL", "proxy", "gold", "proxy gained", "gold gained"], rows)
        + "</details>"
    )
    return _section(
        "Over-optimization",
        body,
        "Each point: the policy's samples over a stretch of PPO steps, joined in time order "
        "(the large marker is the end); left against KL, right in time order. Up: reward "
        "gained since the first stretch, each in its own units (the proxy, the reward model, "
        "in standard deviations of its training completions; gold, the hidden judge's "
        "points); across: how far the policy has moved from the reference. Where the proxy "
        "keeps rising while the gold reward stalls or falls, the policy is exploiting the "
        "reward model's errors (Gao et al. 2022).",
    )


def _curves_section(d: ReportData) -> str:
    plots = [(c, _plot_curve(d, c)) for c in _CURVES]
    cells = [f"<figure>{_img(p, c.title)}</figure>" for c, p in plots if p]
    if not cells:
        return ""
    stops = [
        f"{what} stopped: {line['stop_reason']}"
        for what, log in (("SFT", d.sft_log), ("reward model", d.rm_log), ("PPO", d.ppo_log))
        for line in log[-1:]
        if isinstance(line.get("stop_reason"), str)
    ]
    steps = len(_series(d.ppo_log, "reward_mean")[0] or _series(d.ppo_log, "kl")[0])
    ppo = f"PPO: {steps} logged steps. " if steps else ""
    return _section(
        "Training curves",
        '<div class="grid">' + "".join(cells) + "</div>",
        f"{ppo}Losses fall as a model learns; the reward-model accuracy is the share of "
        "training pairs it orders as the labelers did (0.5: chance, dashed); KL: the sum over "
        "a completion's tokens of log pi - log ref, averaged over the batch; entropy falls as "
        "the policy grows sure of itself; the clip fraction is the share of tokens whose "
        "probability ratio PPO clipped. Long curves: faint points, a moving average on top. "
        + " ".join(stops),
    )


def _agreement_section(agreement: Mapping[str, Any]) -> str:
    scalars = {k: v for k, v in agreement.items() if not isinstance(v, dict | list)}
    body = _kv_table(scalars)
    labelers = agreement.get("labelers")
    if isinstance(labelers, dict) and labelers:
        keys = list(dict.fromkeys(k for s in labelers.values() if isinstance(s, dict) for k in s))
        rows = [
            [_e(name)] + [_fmt(s.get(k)) for k in keys]
            for name, s in labelers.items()
            if isinstance(s, dict)
        ]
        body += "<h3>Each labeler against the others' consensus</h3>"
        body += _table(["labeler", *keys], rows)
    by_criterion = agreement.get("by_criterion")
    if isinstance(by_criterion, dict) and by_criterion:
        keys = list(
            dict.fromkeys(k for s in by_criterion.values() if isinstance(s, dict) for k in s)
        )
        rows = [
            [_e(c)] + [_fmt(s.get(k)) for k in keys]
            for c, s in by_criterion.items()
            if isinstance(s, dict)
        ]
        body += "<h3>By criterion</h3>" + _table(["criterion", *keys], rows)
    return _section(
        "Labeler agreement",
        body,
        "Pairwise agreement: the share of completion pairs two labelers of the same prompt "
        "order the same way (InstructGPT's labelers: about 73%). Kendall's W: agreement of "
        "whole rankings, 0 to 1. Krippendorff's alpha: agreement beyond chance (1 perfect, "
        "0 chance).",
    )


def _scores_html(scores: Any) -> str:
    if scores is None:
        return ""
    if isinstance(scores, dict):
        parts = [f"{_e(k)} {_fmt(v)}" for k, v in scores.items()]
    else:
        parts = [_fmt(scores)]
    return f'<div class="scores">{" · ".join(parts)}</div>'


def _side_by_side_table(rows: Sequence[SideBySideRow], name) -> str:
    columns_of = [r.columns() for r in rows]
    columns = list(dict.fromkeys(k for cols in columns_of for k in cols))
    body = []
    for row, cols in zip(rows, columns_of, strict=True):
        cells = [f'<div class="prompt">{_e(row.prompt)}</div>']
        for c in columns:
            text = cols.get(c)
            if text is None:
                shown = '<span class="missing">-</span>'
            elif not text:
                shown = '<span class="missing">(empty)</span>'
            else:
                shown = f'<div class="text">{_e(text)}</div>'
            cells.append(shown + _scores_html(row.scores.get(c)))
        body.append(cells)
    return _table(["prompt", *(name(c) for c in columns)], body, cls="sxs")


def _side_by_side_section(d: ReportData, name) -> str:
    body = ""
    if d.side_by_side:
        body += _side_by_side_table(d.side_by_side, name)
    for r in reversed(d.rounds):
        if r.side_by_side:
            body += (
                f"<details><summary>Round {_e(r.round)}: {len(r.side_by_side)} prompts"
                f"</summary>{_side_by_side_table(r.side_by_side, name)}</details>"
            )
    return _section(
        "Side by side",
        body,
        "The same held-out prompts, each policy's completion beside the others, with their "
        "scores (reward: the reward model's; gold: the hidden judge's; toxicity 1: a rude "
        "word)."
        + (
            " Each round's own samples are folded below."
            if any(r.side_by_side for r in d.rounds)
            else ""
        ),
    )


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #555; margin-top: 0; }
section { margin: 2.2rem 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
h3 { margin: 1.2rem 0 0.3rem; font-size: 1.05rem; }
.headline { font-size: 1.3rem; line-height: 1.5; max-width: 60rem; margin: 0.6rem 0 0.6rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td { font-variant-numeric: tabular-nums; }
.scale { color: #777; font-size: 0.78rem; font-weight: normal; }
.key { color: #888; font-size: 0.75rem; font-family: ui-monospace, monospace; }
.figures td:nth-child(3) { color: #555; max-width: 36rem; }
.badge { display: inline-block; padding: 0.05rem 0.55rem; border-radius: 0.8rem; color: #fff;
         font-weight: 600; font-size: 0.85rem; white-space: nowrap; }
.good { color: #2e7d32; font-weight: 600; } .bad { color: #c62828; font-weight: 600; }
.badge.good { background: #2e7d32; color: #fff; } .badge.bad { background: #c62828; color: #fff; }
.badge.unknown { background: #999; }
.also { font-size: 1.02rem; margin: 0 0 1rem; padding-left: 1.2rem; max-width: 60rem; }
.also li { margin: 0.15rem 0; }
.neutral { color: #546e7a; font-weight: 600; }
img { max-width: 100%; height: auto; display: block; margin: 0.5rem 0; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(340px, 1fr)); gap: 0.5rem; }
figure { margin: 0; }
.note { color: #555; font-size: 0.9rem; max-width: 60rem; }
.sxs td { max-width: 28rem; } .sxs .prompt { max-height: 10rem; overflow: auto; color: #444; }
.text { white-space: pre-wrap; } .scores { color: #666; font-size: 0.8rem; margin-top: 0.3rem; }
.missing { color: #999; } details { margin: 0.8rem 0; } summary { cursor: pointer; color: #345; }
"""


def render_report(data: Mapping[str, Any], out_path: str | Path) -> Path:
    """Write the self-contained report of `data` (see the module docstring for its
    schema) to `out_path`, atomically; returns the path."""
    from alignloop.io import atomic_write

    d = _validate(data)
    name = _namer(d)
    parts = [f"<h1>{_e(d.title)}</h1>"]
    if d.subtitle:
        parts.append(f'<p class="subtitle">{_e(d.subtitle)}</p>')
    if d.metrics or d.targets or d.headline or d.win_rates:
        parts.append(_top_section(d, name))
    if d.rounds:
        parts.append(_rounds_section(d))
    if d.win_rates:
        parts.append(_win_rate_section(d.win_rates, name))
    if d.before_after:
        parts.append(_before_after_section(d.before_after, name))
    if d.side_by_side or any(r.side_by_side for r in d.rounds):
        parts.append(_side_by_side_section(d, name))
    if d.overoptimization:
        parts.append(_overoptimization_section(d.overoptimization))
    parts.append(_curves_section(d))
    if d.reward_model:
        parts.append(
            _section(
                "Reward model",
                _kv_table(d.reward_model),
                "Accuracy: the share of held-out pairs it orders as the "
                "labelers (or the gold judge) did; 0.5 is chance.",
            )
        )
    if d.agreement:
        parts.append(_agreement_section(d.agreement))
    if d.config:
        parts.append(f"<details><summary>Configuration</summary>{_kv_table(d.config)}</details>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(d.title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(p for p in parts if p)
        + "</body></html>\n"
    )
    out = Path(out_path)
    with atomic_write(out) as f:
        f.write(page)
    return out
