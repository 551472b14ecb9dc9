"""report.html: one self-contained page of a run's figures and plots.

Self-contained: the plots are PNG files drawn by matplotlib (the Agg canvas, no
pyplot, no display) and embedded as base64 `data:` URIs, the style sheet is inline,
and the page links to nothing, so it opens offline and can be mailed as one file.
Every text that comes from the data (completions are untrusted model output; prompts,
policy names, config values) is HTML-escaped; the page has no script.

The data, a JSON object; every section is optional and shown only when present
(unknown top-level keys are an error, so a misspelt section does not silently vanish):

    title        str, the page's heading (default "alignloop report")
    subtitle     str, a line under it (what was evaluated)
    config       {name: value}: the run's options, shown folded
    metrics      {name: number | str | None}: the headline figures, one table
    ppo_log      [{"step", "ppo/reward_mean", "ppo/kl", ...}]: the lines of a PPO run's
                 metrics.jsonl (`alignloop.train.ppo`; the keys without their "ppo/"
                 prefix are accepted too). Plots: reward (and "rlhf_reward", reward
                 minus the KL penalty) by step; KL to the reference by step.
    overoptimization  [{"kl", "proxy", "gold", "label"?}]: proxy (reward-model) and
                 gold reward of policies as the KL to the reference grows; Gao et al.
                 2022, "Scaling Laws for Reward Model Overoptimization". One plot.
    win_rates    {name: {"wins", "ties", "losses", "n", "rate", "stderr", "a"?, "b"?,
                 "judge"?}} (`metrics.win_rate`): a table and a plot with 95% intervals.
    before_after {policy: {"reward_mean", "gold_mean", "kl_mean", "length_mean" or
                 "length_words_mean" / "length_tokens_mean", "toxicity_rate", ...}}:
                 one row per policy (before first); a plot of the length, toxicity,
                 reward and gold figures present.
    reward_model {"accuracy_labelers", "accuracy_gold", "n", ...}: numbers, one table
    agreement    `alignloop.feedback.agreement_report(...)`: its figures, per-labeler
                 agreement with the others' consensus, per-criterion figures
    side_by_side [{"prompt", <column>: text, ..., "scores"?: {<column>: {name: number}
                 or number}}]: the same prompts' completions side by side, e.g.
                 columns "reference", "sft", "rlhf"

`render_report(data, path)` writes the page (atomically); `alignloop report --data
report_data.json --out report.html` does the same from a file.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

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


class OverPoint(_Strict):
    kl: float
    proxy: float | None = None
    gold: float | None = None
    label: str | None = None


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


class ReportData(_Strict):
    title: str = "alignloop report"
    subtitle: str | None = None
    config: dict[str, Any] = {}
    metrics: dict[str, Number | str | bool | None] = {}
    ppo_log: list[dict[str, Any]] = []
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
    paths: Sequence[str | Path] = (), *, ppo_log: str | Path | None = None
) -> dict[str, Any]:
    """The report data of JSON files merged in order (a later file's section replaces
    an earlier one's), with the lines of a PPO metrics log as `ppo_log`."""
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
    if ppo_log is not None:
        data["ppo_log"] = load_ppo_log(ppo_log)
    if not data:
        raise ReportDataError("no report data: give a data file or a PPO metrics log")
    return data


# --- the PPO log ---------------------------------------------------------------------


def _series(log: Sequence[Mapping[str, Any]], name: str) -> tuple[list[float], list[float]]:
    """(steps, values) of metric `name` ("ppo/<name>" or "<name>") over the log's lines
    that have it (the last line of a run only says why it stopped)."""
    steps, values = [], []
    for i, line in enumerate(log):
        value = line.get(f"ppo/{name}", line.get(name))
        if isinstance(value, int | float) and not isinstance(value, bool):
            steps.append(float(line.get("step", i + 1)))
            values.append(float(value))
    return steps, values


# --- plots -----------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 3.6):
    """A figure on the Agg canvas, with no pyplot state (safe in any process)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> str:
    buffer = io.BytesIO()
    # No "Software" text chunk: the PNG carries nothing but the picture.
    fig.savefig(buffer, format="png", metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plot_ppo_reward(log) -> str | None:
    steps, reward = _series(log, "reward_mean")
    if not steps:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, reward, label="reward (score)", marker="." if len(steps) < 40 else None)
    rl_steps, rl = _series(log, "rlhf_reward")
    if rl_steps:
        ax.plot(rl_steps, rl, label="score - beta * KL", alpha=0.8)
    ax.set(xlabel="PPO step", ylabel="reward", title="Reward during PPO")
    ax.legend(loc="best")
    ax.grid(alpha=0.3)
    return _png(fig)


def _plot_ppo_kl(log) -> str | None:
    steps, kl = _series(log, "kl")
    if not steps:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.plot(steps, kl, color="tab:red", marker="." if len(steps) < 40 else None)
    ax.set(
        xlabel="PPO step",
        ylabel="KL per response (nats)",
        title="KL(policy || reference) during PPO",
    )
    ax.grid(alpha=0.3)
    return _png(fig)


def _plot_overoptimization(points: Sequence[OverPoint]) -> str | None:
    points = sorted(points, key=lambda p: p.kl)
    proxy = [(p.kl, p.proxy) for p in points if p.proxy is not None]
    gold = [(p.kl, p.gold) for p in points if p.gold is not None]
    if not proxy and not gold:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.set(xlabel="KL(policy || reference), nats", title="Gold and proxy reward as KL grows")
    ax.grid(alpha=0.3)
    handles = []
    if proxy:
        handles += ax.plot(*zip(*proxy, strict=True), "o-", color="tab:blue", label="proxy (RM)")
        ax.set_ylabel("proxy reward", color="tab:blue")
    if gold:
        # The two rewards have their own scales: gold gets its own axis.
        gold_ax = ax.twinx() if proxy else ax
        handles += gold_ax.plot(*zip(*gold, strict=True), "s-", color="tab:orange", label="gold")
        gold_ax.set_ylabel("gold reward", color="tab:orange")
    for p in points:
        if p.label:
            y, axis = (p.proxy, ax) if p.proxy is not None else (p.gold, fig.axes[-1])
            axis.annotate(p.label, (p.kl, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.legend(handles=handles, loc="best")
    return _png(fig)


def _plot_win_rates(win_rates: Mapping[str, WinRate]) -> str | None:
    shown = [(name, wr) for name, wr in win_rates.items() if wr.rate is not None]
    if not shown:
        return None
    fig = _figure(height=max(1.8, 0.45 * len(shown) + 1.0))
    ax = fig.add_subplot()
    y = list(range(len(shown)))
    rates = [wr.rate for _, wr in shown]
    errors = [1.96 * (wr.stderr or 0.0) for _, wr in shown]
    ax.barh(y, rates, xerr=errors, color="tab:green", alpha=0.75, capsize=3)
    ax.plot(rates, y, "o", color="darkgreen")  # a rate of 0 shows too
    for yi, rate in zip(y, rates, strict=True):
        ax.annotate(
            f"{rate:.2f}", (rate, yi), textcoords="offset points", xytext=(6, 5), fontsize=8
        )
    ax.axvline(0.5, color="black", linestyle="--", linewidth=1)
    ax.set_yticks(y, [name for name, _ in shown])
    ax.invert_yaxis()
    ax.set(xlim=(0, 1), xlabel="win rate (ties count half), 95% interval", title="Win rates")
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


# Figures of before_after that get a panel: (key, panel title); the first length key
# present is drawn.
_LENGTH_KEYS = ("length_mean", "length_words_mean", "length_tokens_mean")
_PANELS = (
    ("toxicity_rate", "toxicity rate"),
    ("reward_mean", "reward (RM)"),
    ("gold_mean", "gold reward"),
)


def _before_after_panels(table: Mapping[str, Mapping[str, Any]]) -> list[tuple[str, str]]:
    present = {k for row in table.values() for k, v in row.items() if v is not None}
    panels = [(k, k.removesuffix("_mean").replace("_", " ")) for k in _LENGTH_KEYS if k in present][
        :1
    ]
    return panels + [(k, title) for k, title in _PANELS if k in present]


def _plot_before_after(table: Mapping[str, Mapping[str, Any]]) -> str | None:
    panels = _before_after_panels(table)
    if not panels:
        return None
    names = list(table)
    fig = _figure(width=min(12.0, 3.2 * len(panels) + 0.5), height=3.2)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colors = [f"C{i}" for i in range(len(names))]
    for ax, (key, title) in zip(axes, panels, strict=True):
        values = [table[n].get(key) for n in names]
        heights = [0.0 if v is None else v for v in values]
        ax.bar(range(len(names)), heights, color=colors)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def plots_in(data: Mapping[str, Any]) -> list[str]:
    """Names of the plots `render_report` draws for `data`, in page order."""
    d = _validate(data)
    checks: list[tuple[str, Callable[[], bool]]] = [
        ("ppo_reward", lambda: bool(_series(d.ppo_log, "reward_mean")[0])),
        ("ppo_kl", lambda: bool(_series(d.ppo_log, "kl")[0])),
        (
            "overoptimization",
            lambda: any(p.proxy is not None or p.gold is not None for p in d.overoptimization),
        ),
        ("win_rates", lambda: any(wr.rate is not None for wr in d.win_rates.values())),
        ("before_after", lambda: bool(_before_after_panels(d.before_after))),
    ]
    return [name for name, present in checks if present()]


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


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def _section(title: str, body: str, note: str = "") -> str:
    note_html = f'<p class="note">{_e(note)}</p>' if note else ""
    return f"<section><h2>{_e(title)}</h2>{note_html}{body}</section>"


def _win_rate_section(win_rates: Mapping[str, WinRate]) -> str:
    rows = []
    for name, wr in win_rates.items():
        interval = "-"
        if wr.rate is not None and wr.stderr is not None:
            low, high = max(0.0, wr.rate - 1.96 * wr.stderr), min(1.0, wr.rate + 1.96 * wr.stderr)
            interval = f"{low:.3f} to {high:.3f}"
        rows.append(
            [
                _e(name),
                _e(wr.judge or "-"),
                _fmt(wr.rate),
                _e(interval),
                _fmt(wr.wins),
                _fmt(wr.ties),
                _fmt(wr.losses),
                _fmt(wr.n),
            ]
        )
    body = _table(
        ["comparison", "judge", "win rate", "95% interval", "wins", "ties", "losses", "pairs"], rows
    )
    plot = _plot_win_rates(win_rates)
    if plot:
        body = _img(plot, "win rates") + body
    return _section(
        "Win rates",
        body,
        "Share of paired completions where the first policy's scored higher "
        "under the judge; ties count half.",
    )


def _before_after_section(table: Mapping[str, Mapping[str, Any]]) -> str:
    keys = list(dict.fromkeys(k for row in table.values() for k in row))
    rows = [[_e(name)] + [_fmt(row.get(k)) for k in keys] for name, row in table.items()]
    body = _table(["policy", *keys], rows)
    plot = _plot_before_after(table)
    if plot:
        body = _img(plot, "before and after") + body
    return _section("Before and after", body)


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
        "order the same way (InstructGPT's labelers: about 73%).",
    )


def _scores_html(scores: Any) -> str:
    if scores is None:
        return ""
    if isinstance(scores, dict):
        parts = [f"{_e(k)} {_fmt(v)}" for k, v in scores.items()]
    else:
        parts = [_fmt(scores)]
    return f'<div class="scores">{" · ".join(parts)}</div>'


def _side_by_side_section(rows: Sequence[SideBySideRow]) -> str:
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
    return _section("Side by side", _table(["prompt", *columns], body, cls="sxs"))


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2rem auto;
       max-width: 1200px; padding: 0 1rem; color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2rem; } .subtitle { color: #555; margin-top: 0; }
section { margin: 2rem 0; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2rem; }
table { border-collapse: collapse; margin: 0.5rem 0; font-size: 0.92rem; }
th, td { border: 1px solid #ddd; padding: 0.3rem 0.6rem; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td { font-variant-numeric: tabular-nums; }
img { max-width: 100%; display: block; margin: 0.5rem 0; }
.note { color: #555; font-size: 0.9rem; }
.sxs td { max-width: 28rem; } .sxs .prompt { max-height: 10rem; overflow: auto; color: #444; }
.text { white-space: pre-wrap; } .scores { color: #666; font-size: 0.8rem; margin-top: 0.3rem; }
.missing { color: #999; } details { margin: 1rem 0; }
"""


def render_report(data: Mapping[str, Any], out_path: str | Path) -> Path:
    """Write the self-contained report of `data` (see the module docstring for its
    schema) to `out_path`, atomically; returns the path."""
    from alignloop.io import atomic_write

    d = _validate(data)
    parts = [f"<h1>{_e(d.title)}</h1>"]
    if d.subtitle:
        parts.append(f'<p class="subtitle">{_e(d.subtitle)}</p>')
    if d.metrics:
        parts.append(_section("Headline figures", _kv_table(d.metrics)))
    plots = [p for p in (_plot_ppo_reward(d.ppo_log), _plot_ppo_kl(d.ppo_log)) if p]
    if plots:
        steps = len(_series(d.ppo_log, "reward_mean")[0] or _series(d.ppo_log, "kl")[0])
        parts.append(
            _section(
                "PPO",
                "".join(_img(p, "PPO training curve") for p in plots),
                f"{steps} logged steps. KL: the sum over a response's tokens of log pi - log ref, "
                "averaged over the batch.",
            )
        )
    over = _plot_overoptimization(d.overoptimization)
    if over:
        rows = [
            [_e(p.label or ""), _fmt(p.kl), _fmt(p.proxy), _fmt(p.gold)]
            for p in sorted(d.overoptimization, key=lambda p: p.kl)
        ]
        parts.append(
            _section(
                "Over-optimization",
                _img(over, "gold and proxy reward against KL")
                + _table(["policy", "KL", "proxy", "gold"], rows),
                "Proxy (reward-model) and gold reward of the policy as its KL to the reference "
                "grows. Where the proxy keeps rising while the gold reward stalls or falls, the "
                "policy is exploiting the reward model's errors (Gao et al. 2022).",
            )
        )
    if d.win_rates:
        parts.append(_win_rate_section(d.win_rates))
    if d.before_after:
        parts.append(_before_after_section(d.before_after))
    if d.reward_model:
        parts.append(
            _section(
                "Reward model",
                _kv_table(d.reward_model),
                "Accuracy: the share of held-out pairs it orders as the "
                "labelers (or the gold judge) did.",
            )
        )
    if d.agreement:
        parts.append(_agreement_section(d.agreement))
    if d.side_by_side:
        parts.append(_side_by_side_section(d.side_by_side))
    if d.config:
        parts.append(f"<details><summary>Configuration</summary>{_kv_table(d.config)}</details>")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(d.title)}</title><style>{_CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>\n"
    )
    out = Path(out_path)
    with atomic_write(out) as f:
        f.write(page)
    return out
