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
    # One image per plot, in page order: win rates, before/after, over-optimization,
    # then the training curves (PPO reward, PPO KL).
    assert plots_in(data) == [
        "win_rates",
        "before_after",
        "overoptimization",
        "ppo_reward",
        "ppo_kl",
    ]
    pngs = images(page)
    assert len(pngs) == page.count("<img") == 5
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 5000 for p in pngs)
    for heading in (
        "Training curves",
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
    for heading in (
        "PPO",
        "Training curves",
        "Over-optimization",
        "Side by side",
        "Labeler agreement",
        "Rounds",
    ):
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


def rounds(n: int) -> list[dict]:
    """`n` rounds as metrics.json's `rounds` gives them; round 2 has samples."""
    out = []
    for r in range(1, n + 1):
        row = {
            "round": r,
            "n_rankings": 2000,
            "win_rate_vs_sft": 0.6 + 0.07 * r,
            "win_rate_vs_reference": 0.5 + 0.07 * r,
            "rm_gold_accuracy_on_policy": 0.7 + 0.02 * r,
            "kl_to_sft": 0.5 * r,
            "gold_mean": 1.0 + 0.15 * r,
            "seconds": 150.0,
        }
        if r == 2:
            row["side_by_side"] = [{"prompt": "round two doc", "sft": "old", "rlhf": EVIL}]
        out.append(row)
    return out


def headline(page: str) -> str:
    """The page's opening sentence and the list under it, as text."""
    top = re.search(r'<p class="headline">.*?</p>(<ul class="also">.*?</ul>)?', page)
    assert top is not None
    text = re.sub(r"<[^>]+>", "", re.sub(r"</(p|li)>", " ", top[0]))
    return " ".join(html.unescape(text).split())


def test_the_top_says_it_in_words(tmp_path):
    data = full_data()
    data["metrics"] = {
        "n_eval_documents": 5,
        "eval_samples_per_document": 2,
        "rm_gold_accuracy": 0.8,
    }
    data["targets"] = {
        "win_rate_rlhf_vs_sft": {"target": ">= 0.75", "value": 0.7, "met": False},
        "demo_seconds": {"target": "<= 600.0", "value": 444.7, "met": True},
    }
    page = render_report(data, tmp_path / "r.html").read_text()
    text = headline(page)
    assert text.startswith(
        "The tuned policy's completions beat the supervised policy's 70.0% of the time on "
        "5 documents nobody trained on, 2 samples each (95% interval 45% to 95%, by the "
        "hidden gold judge; ties count half)."
    )
    assert "1 of 2 targets met; not met: the tuned policy beats the supervised policy" in text
    # The targets: needed and reached in the figure's form, met or not met.
    assert "at least 75.0%" in page and "70.0%" in page and "at most 600 s (10.0 min)" in page
    assert page.count('class="badge bad">not met<') == 1
    assert page.count('class="badge good">met<') == 1
    # Key figures with their meaning; every figure folded below.
    assert "Reward model agrees with the gold judge</td><td>80.0%" in page
    assert "0.5: chance" in page and "<summary>All 3 figures</summary>" in page
    # The policies' table, in words with each column's scale.
    assert "The policies on the held-out prompts" in page and "lower is better" in page
    assert "<td>Tuned policy</td>" in page


def test_a_headline_given_and_names(tmp_path):
    data = full_data()
    data["headline"] = "It <works>."
    data["names"] = {"rlhf": "new model"}
    data["rounds"] = rounds(1)
    page = render_report(data, tmp_path / "r.html").read_text()
    assert '<p class="headline">It &lt;works&gt;.</p>' in page
    assert "new model vs supervised policy" in page  # the win-rate table's comparison
    # Without a headline given: "After N rounds" where there are rounds.
    del data["headline"]
    page = render_report(data, tmp_path / "r.html").read_text()
    assert headline(page).startswith("After 1 round of RLHF, the new model's completions beat")


def test_rounds_table_plot_and_samples(tmp_path):
    data = full_data() | {"rounds": rounds(3)}
    assert plots_in(data)[:2] == ["rounds", "win_rates"]
    page = render_report(data, tmp_path / "r.html").read_text()
    assert '<section id="rounds"><h2>Rounds</h2>' in page
    table = page[page.index('<table class="rounds">') :]
    table = table[: table.index("</table>")]
    assert table.count("<tr>") == 4  # the header and three rounds
    assert "<td>81.0%</td><td>71.0%</td><td>76.0%</td><td>1.50 nats</td>" in table  # round 3
    # Round 2's samples, folded, escaped like the others.
    assert "<summary>Round 2: 1 prompts</summary>" in page and "round two doc" in page
    assert "<script" not in page.lower()
    assert page.count(html.escape(EVIL, quote=True)) == 2
    assert "all pairs so far, and runs PPO." in page  # no keys: nothing more said
    # how the rounds ran, in words, from the loop's keys
    keys = {"rm_init": "scratch", "ppo_init": "start", "reference": "sft"}
    page = render_report(data | {"config": keys}, tmp_path / "r.html").read_text()
    assert ("all pairs so far (each anew), and runs PPO from the start policy, the KL to the "
            "start policy.") in page  # fmt: skip
    keys = {"rm_init": "previous", "ppo_init": "previous", "reference": "previous"}
    page = render_report(data | {"config": keys}, tmp_path / "r.html").read_text()
    assert html.escape("(from the last round's reward model), and runs PPO from the last "
                       "round's policy, the KL to the last round's policy.") in page  # fmt: skip
    # One round: its table, no plot of rounds; the rest of the page as before.
    data["rounds"] = rounds(1)
    assert "rounds" not in plots_in(data)
    page = render_report(data, tmp_path / "r.html").read_text()
    assert "<h2>Rounds</h2>" in page and page.count("<img") == 5
    with pytest.raises(ReportDataError, match=r"rounds\.0\.round"):
        render_report({"rounds": [{"win_rate_vs_sft": 0.5}]}, tmp_path / "r.html")


def test_win_rates_coloured_by_meaning(tmp_path):
    def wr(rate, stderr):
        return {"wins": 1, "ties": 0, "losses": 1, "n": 400, "rate": rate, "stderr": stderr,
                "a": "sft", "b": "prompt_reference", "judge": "gold"}  # fmt: skip

    data = {"win_rates": {"lose": wr(0.42, 0.02), "tie": wr(0.49, 0.02), "win": wr(0.6, 0.02)}}
    page = render_report(data, tmp_path / "r.html").read_text()
    assert '<span class="bad">42.0%</span>' in page  # below one half: a loss, not a success
    assert '<span class="neutral">49.0%</span>' in page  # its interval holds one half
    assert '<span class="good">60.0%</span>' in page
    # The headline says a rate below one half as it is.
    assert "The supervised policy's completions beat the references' only 42.0% of the time" in (
        headline(page)
    )


def png_size(png: bytes) -> tuple[int, int]:
    assert png[12:16] == b"IHDR"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def test_plots_are_drawn_at_twice_their_shown_size(tmp_path):
    page = render_report(full_data(), tmp_path / "r.html").read_text()
    shown = re.findall(
        r'<img src="data:image/png;base64,([^"]+)" width="(\d+)" height="(\d+)"', page
    )
    assert len(shown) == 5
    for b64, width, height in shown:
        assert png_size(base64.b64decode(b64)) == (2 * int(width), 2 * int(height))


def test_over_optimization_points_stay_in_time_order(tmp_path):
    points = [
        {"kl": 0.5, "proxy": 0.0, "gold": 1.0, "label": "steps 1-10"},
        {"kl": 1.5, "proxy": 0.4, "gold": 1.2, "label": "steps 11-20"},
        {"kl": 1.2, "proxy": 0.5, "gold": 1.1, "label": "steps 21-30"},
    ]
    page = render_report({"overoptimization": points}, tmp_path / "r.html").read_text()
    rows = re.findall(r"<tr><td>(steps [0-9-]+)</td>", page)
    assert rows == ["steps 1-10", "steps 11-20", "steps 21-30"]  # not sorted by KL
    # Gains since the first point, both rewards.
    assert "<td>0.400</td><td>0.200</td>" in page and "<td>0.500</td><td>0.100</td>" in page


def sft_log() -> list[dict]:
    return [{"step": s, "sft/loss": 3.0 / s, "sft/lr": 1e-3} for s in range(10, 60, 10)] + [
        {"step": 50, "eval/eval_loss": 0.9, "eval/n_eval": 10}
    ]


def rm_log() -> list[dict]:
    return [{"step": s, "rm/loss": 0.7 - 0.01 * s, "rm/accuracy": 0.5 + 0.01 * s}
            for s in range(1, 20)]  # fmt: skip


def ppo_log() -> list[dict]:
    keys = ("reward_mean", "kl", "rlhf_reward", "entropy", "v_loss", "clipfrac")
    return [{"step": s, **{f"ppo/{k}": 0.01 * s for k in keys}} for s in range(1, 60)] + [
        {"step": 59, "stop_reason": "max_steps"}
    ]


def test_training_curves_from_the_three_logs(tmp_path, capsys):
    for name, lines in (("sft", sft_log()), ("rm", rm_log()), ("ppo", ppo_log())):
        (tmp_path / f"{name}.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    (tmp_path / "data.json").write_text(json.dumps({"title": "curves"}))
    out = tmp_path / "report.html"
    args = ["report", "--data", str(tmp_path / "data.json"), "--out", str(out)]
    for name in ("sft", "rm", "ppo"):
        args += [f"--{name}-log", str(tmp_path / f"{name}.jsonl")]
    assert main(args) == 0
    data = load_report_data(
        [tmp_path / "data.json"], ppo_log=tmp_path / "ppo.jsonl",
        sft_log=tmp_path / "sft.jsonl", rm_log=tmp_path / "rm.jsonl",
    )  # fmt: skip
    assert plots_in(data) == [
        "sft_loss",
        "rm_loss",
        "rm_accuracy",
        "ppo_reward",
        "ppo_kl",
        "ppo_entropy",
        "ppo_value_loss",
        "ppo_clipfrac",
    ]
    page = out.read_text()
    assert page.count("<img") == 8 and "PPO stopped: max_steps" in page
    for title in ("SFT loss", "Reward-model accuracy", "Value loss", "Clip fraction"):
        assert f'alt="{title}"' in page
    # A log without a metric draws no plot for it: an SFT log alone gives the SFT loss.
    assert plots_in({"sft_log": sft_log()}) == ["sft_loss"]


def test_an_eval_runs_top(tmp_path):
    """`alignloop eval`'s data: its policies keep their names ("reference" is a policy
    there, not the prompts' references), its figures are told in words."""
    wr = {"wins": 14, "ties": 1, "losses": 5, "n": 20, "rate": 0.725, "stderr": 0.1,
          "a": "policy", "b": "reference", "judge": "gold"}  # fmt: skip
    data = {
        "metrics": {"eval/n_prompts": 10, "eval/policy/toxicity_rate": 0.3},
        "win_rates": {"policy_vs_reference/gold": wr},
    }
    page = render_report(data, tmp_path / "r.html").read_text()
    assert headline(page) == (
        "The policy's completions beat the reference's 72.5% of the time on 10 prompts, 20 "
        "paired samples (95% interval 53% to 92%, by the hidden gold judge; ties count half)."
    )
    assert "<td>eval/policy/toxicity_rate</td><td>30.0%</td><td>share of completions" in page


def test_the_reward_curves_draw_each_criterion_and_user(monkeypatch, tmp_path):
    """A combined PPO reward's parts (each criterion head, each user's reward; not a
    personal model's features) and a criteria reward model's held-out accuracy per
    criterion are lines of the curves they belong to; one criterion adds none."""
    from alignloop.evaluate import report

    drawn = {}

    def keep(fig):  # the legend of each curve instead of its picture
        ax = fig.axes[0]
        drawn[ax.get_title()] = ax.get_legend_handles_labels()[1]
        return report.Plot("data:,", 1, 1)

    monkeypatch.setattr(report, "_png", keep)
    ppo = [{"step": s, "ppo/reward_mean": 0.1 * s, "ppo/score_helpfulness": 0.2 * s,
            "ppo/score_harmlessness": -0.1 * s, "ppo/score_feature_0": 1.0,
            "ppo/score_user_anna": 0.3} for s in range(1, 5)]  # fmt: skip
    rm = [{"step": s, "rm/accuracy": 0.6} for s in range(1, 5)] + [
        {"step": 4, "eval/accuracy": 0.7, "eval/by_criterion/helpfulness/accuracy": 0.72,
         "eval/by_criterion/helpfulness/n": 50, "eval/by_criterion/harmlessness/accuracy": 0.68}
    ]  # fmt: skip
    assert plots_in({"ppo_log": ppo, "rm_log": rm}) == ["rm_accuracy", "ppo_reward"]
    report.render_report({"ppo_log": ppo, "rm_log": rm}, tmp_path / "r.html")
    assert drawn["PPO reward"] == ["score", "helpfulness head", "harmlessness head",
                                   "anna's reward"]  # fmt: skip
    assert drawn["Reward-model accuracy"] == [
        "training", "held-out", "held-out, helpfulness", "held-out, harmlessness"
    ]
    one = [line for line in rm if "eval/accuracy" not in line] + [
        {"step": 4, "eval/accuracy": 0.7, "eval/by_criterion/overall/accuracy": 0.7}
    ]
    report.render_report({"rm_log": one}, tmp_path / "r.html")
    assert drawn["Reward-model accuracy"] == ["training", "held-out"]
