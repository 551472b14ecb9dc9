"""report.html: self-contained (no URL anywhere), escaped, one image per plot present,
sections only for the data given, schema errors that name the key."""

from __future__ import annotations

import base64
import html
import json
import re

import pytest

from alignloop.cli import main
from alignloop.evaluate.report import (
    ReportDataError,
    load_report_data,
    plots_in,
    render_report,
)

EVIL = '<script>alert("x")</script><img src="https://evil.example/x.png">'


def full_data() -> dict:
    """Every section, shaped as the loop writes them (PPO keys as train.ppo logs them)."""
    ppo_log = [
        {"step": s, "ppo/reward_mean": 0.1 * s, "ppo/kl": 0.05 * s, "ppo/rlhf_reward": 0.09 * s}
        for s in range(1, 6)
    ] + [{"step": 5, "stop_reason": "max_steps"}]
    return {
        "title": "demo <round 1>",
        "subtitle": "seed 0",
        "config": {"seed": 0, "out": "runs/demo", "nested": {"a": [1, 2]}},
        "metrics": {"eval/win_rate": 0.61, "n": 200, "note": "ok"},
        "ppo_log": ppo_log,
        "overoptimization": [
            {"kl": 0.0, "proxy": 0.0, "gold": 1.0, "label": "sft"},
            {"kl": 2.0, "proxy": 0.8, "gold": 1.3},
            {"kl": 8.0, "proxy": 1.5, "gold": 0.9, "label": "rlhf"},
        ],
        "win_rates": {
            "rlhf_vs_sft/gold": {
                "wins": 6,
                "ties": 2,
                "losses": 2,
                "n": 10,
                "rate": 0.7,
                "stderr": 0.13,
                "a": "rlhf",
                "b": "sft",
                "judge": "gold",
            },
        },
        "before_after": {
            "sft": {"length_mean": 12.0, "toxicity_rate": 0.2, "reward_mean": 0.0},
            "rlhf": {"length_mean": 9.5, "toxicity_rate": 0.05, "reward_mean": 1.1},
        },
        "reward_model": {"accuracy_labelers": 0.71, "accuracy_gold": 0.8, "n": 400},
        "agreement": {
            "pairwise_agreement": 0.749,
            "kendall_w": 0.709,
            "krippendorff_alpha": 0.565,
            "labelers": {"ann": {"rankings": 3, "agreement_with_consensus": 0.8, "pairs": 9}},
        },
        "side_by_side": [
            {
                "prompt": "doc one tl;dr :",
                "reference": "ref",
                "sft": "a summary",
                "rlhf": EVIL,
                "scores": {"rlhf": {"reward": 1.0, "gold": -1.0}, "sft": 0.5},
            },
            {"prompt": "doc two & more", "reference": None, "sft": "", "rlhf": "fine"},
        ],
    }


def images(page: str) -> list[bytes]:
    return [
        base64.b64decode(b) for b in re.findall(r'<img src="data:image/png;base64,([^"]+)"', page)
    ]


def test_full_report_is_self_contained_and_escaped(tmp_path):
    data = full_data()
    page = render_report(data, tmp_path / "report.html").read_text()
    # Nothing fetched: no URL in any src or href, no script, no link to a style sheet.
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page)
    assert "<script" not in page.lower() and "<link" not in page.lower()
    escaped = html.escape(EVIL, quote=True)
    assert escaped in page  # the completion is shown as inert text
    assert "http://" not in page.replace(escaped, "")
    assert "https://" not in page.replace(escaped, "")
    assert "demo &lt;round 1&gt;" in page and "doc two &amp; more" in page
    # One image per plot: PPO reward, PPO KL, over-optimization, win rates, before/after.
    assert plots_in(data) == [
        "ppo_reward",
        "ppo_kl",
        "overoptimization",
        "win_rates",
        "before_after",
    ]
    pngs = images(page)
    assert len(pngs) == page.count("<img") == 5
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    for heading in (
        "PPO",
        "Over-optimization",
        "Win rates",
        "Before and after",
        "Reward model",
        "Labeler agreement",
        "Side by side",
        "Headline figures",
        "Configuration",
    ):
        assert heading in page
    assert "0.749" in page and "reward 1 · gold -1" in page and "(empty)" in page


def test_sections_appear_only_with_their_data(tmp_path):
    data = {
        "title": "only win rates",
        "win_rates": {"a_vs_b": {"wins": 0, "ties": 0, "losses": 0, "n": 0, "rate": None}},
    }
    page = render_report(data, tmp_path / "r.html").read_text()
    assert "Win rates" in page and "<img" not in page  # no rate, no plot
    for heading in ("PPO", "Over-optimization", "Side by side", "Labeler agreement"):
        assert f"<h2>{heading}</h2>" not in page
    # A PPO log with KL only (no reward key) gives the KL plot alone.
    data = {"ppo_log": [{"step": 1, "kl": 0.1}, {"step": 2, "kl": 0.3}]}
    assert plots_in(data) == ["ppo_kl"]
    assert render_report(data, tmp_path / "r.html").read_text().count("<img") == 1


def test_bad_data_names_the_key(tmp_path):
    with pytest.raises(ReportDataError, match="win_rate"):  # a misspelt section
        render_report({"win_rate": {}}, tmp_path / "r.html")
    with pytest.raises(ReportDataError, match=r"win_rates\.x\.rate"):
        render_report(
            {"win_rates": {"x": {"wins": 1, "ties": 0, "losses": 0, "n": 1}}}, tmp_path / "r.html"
        )
    with pytest.raises(ReportDataError, match="column 'sft' holds a int, not a text"):
        render_report({"side_by_side": [{"prompt": "p", "sft": 3}]}, tmp_path / "r.html")
    assert not (tmp_path / "r.html").exists()


def test_report_command_merges_data_and_a_ppo_log(tmp_path, capsys):
    data = full_data()
    ppo_log = data.pop("ppo_log")
    (tmp_path / "data.json").write_text(json.dumps(data))
    (tmp_path / "extra.json").write_text(json.dumps({"title": "merged"}))
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in ppo_log))
    out = tmp_path / "report.html"
    args = [
        "report",
        "--data",
        str(tmp_path / "data.json"),
        str(tmp_path / "extra.json"),
        "--ppo-log",
        str(tmp_path / "metrics.jsonl"),
        "--out",
        str(out),
    ]
    assert main(args) == 0
    page = out.read_text()
    assert "<h1>merged</h1>" in page and page.count("<img") == 5
    assert f"wrote {out}" in capsys.readouterr().out
    (tmp_path / "bad.json").write_text(json.dumps({"side_by_side": [{"sft": "x"}]}))
    assert main(["report", "--data", str(tmp_path / "bad.json"), "--out", str(out)]) == 2
    assert "bad.json: report data: side_by_side.0.prompt: Field required" in capsys.readouterr().err
    with pytest.raises(ReportDataError, match="no report data"):
        load_report_data([])
