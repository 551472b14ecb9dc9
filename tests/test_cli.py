"""The console script end to end on small files: thin commands over the library."""

import json
import subprocess
import sys

import pytest

from alignloop.cli import main
from alignloop.io import read_records, write_records


@pytest.fixture
def task_files(tmp_path, small_task):
    prompts, completions, rankings = small_task
    paths = {k: tmp_path / f"{k}.jsonl" for k in ("prompts", "completions", "rankings")}
    write_records(paths["prompts"], prompts)
    write_records(paths["completions"], completions)
    write_records(paths["rankings"], rankings)
    return paths


def test_help_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "alignloop", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for command in (
        "demo",
        "data",
        "feedback",
        "world",
        "train-rm",
        "train-ppo",
        "eval-rm",
        "score",
        "train-sft",
        "generate",
        "eval",
        "report",
        "serve",
        "project",
        "labeler",
    ):
        assert command in out


@pytest.mark.parametrize("trainer", ["ppo", "sft"])
def test_a_trainer_module_is_its_subcommand(trainer):
    """`python -m alignloop.train.X ARGS` is `alignloop train-X ARGS`: the same help, and
    an unknown flag is refused with exit status 2 naming the subcommand."""

    def run(*args):
        return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)

    module = run(f"alignloop.train.{trainer}", "--help")
    assert module.returncode == 0
    assert module.stdout == run("alignloop", f"train-{trainer}", "--help").stdout
    wrong = run(f"alignloop.train.{trainer}", "--no-such-flag")
    assert wrong.returncode == 2
    assert f"alignloop train-{trainer}: error: unrecognized arguments" in wrong.stderr


def test_feedback_pairs_writes_every_strict_pair(task_files, tmp_path, capsys):
    out = tmp_path / "pairs.jsonl"
    args = ["feedback", "pairs", "--out", str(out)]
    for k in ("rankings", "completions", "prompts"):
        args += [f"--{k}", str(task_files[k])]
    assert main(args) == 0
    pairs = read_records(out, "comparison")
    # ann: a > {b, c} (2 pairs, b~c tied); bob: a > c > b (3); ann on p2: 3.
    assert len(pairs) == 8
    assert {(p.chosen_id, p.rejected_id) for p in pairs if p.labeler == "bob"} == {
        ("p1-a", "p1-c"), ("p1-a", "p1-b"), ("p1-c", "p1-b")
    }  # fmt: skip
    assert all(p.prompt.startswith("summarize:") for p in pairs)
    assert "wrote 8 pairs" in capsys.readouterr().out


def test_feedback_pairs_with_rank_gap_margin(task_files, tmp_path):
    out = tmp_path / "pairs.parquet"
    args = ["feedback", "pairs", "--out", str(out), "--margin", "rank-gap"]
    for k in ("rankings", "completions", "prompts"):
        args += [f"--{k}", str(task_files[k])]
    assert main(args) == 0
    gaps = {
        (p.labeler, p.chosen_id, p.rejected_id): p.margin for p in read_records(out, "comparison")
    }
    assert gaps[("bob", "p1-a", "p1-b")] == 2.0 and gaps[("bob", "p1-a", "p1-c")] == 1.0


def test_bad_reference_is_a_clear_error_and_writes_nothing(task_files, tmp_path, capsys):
    rankings = task_files["rankings"]
    rankings.write_text(
        rankings.read_text()
        + json.dumps(
            {
                "prompt_id": "p1",
                "labeler": "cy",
                "criterion": "overall",
                "ranking": [["p1-a"], ["p9-z"]],
            }
        )  # fmt: skip
        + "\n"
    )
    out = tmp_path / "pairs.jsonl"
    args = ["feedback", "pairs", "--out", str(out)]
    for k in ("rankings", "completions", "prompts"):
        args += [f"--{k}", str(task_files[k])]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert f"{rankings}:4: field 'ranking': no completion with id 'p9-z'" in err
    assert not out.exists()


def test_feedback_agreement_prints_json(task_files, capsys):
    assert main(["feedback", "agreement", "--rankings", str(task_files["rankings"])]) == 0
    report = json.loads(capsys.readouterr().out)
    # ann and bob both strictly order (a,b) and (a,c) of p1 and agree on both.
    assert report["pairwise_agreement"] == 1.0
    assert report["n_pairwise_comparisons"] == 2
    assert set(report["labelers"]) == {"ann", "bob"}


def test_feedback_consensus(task_files, tmp_path):
    out = tmp_path / "consensus.jsonl"
    assert main(["feedback", "consensus", "--rankings", str(task_files["rankings"]),
                 "--out", str(out)]) == 0  # fmt: skip
    consensus = {r.prompt_id: r for r in read_records(out, "ranking")}
    assert consensus["p1"].ranking[0] == ["p1-a"] and consensus["p1"].labeler == "consensus"
    assert consensus["p2"].ranking == [["p2-c"], ["p2-b"], ["p2-a"]]


def test_data_validate_convert_and_errors(task_files, tmp_path, capsys):
    assert main(["data", "validate", str(task_files["rankings"]), "--kind", "ranking"]) == 0
    assert "3 valid ranking records" in capsys.readouterr().out
    parquet = tmp_path / "rankings.parquet"
    assert main(["data", "convert", str(task_files["rankings"]), str(parquet),
                 "--kind", "ranking"]) == 0  # fmt: skip
    assert read_records(parquet, "ranking") == read_records(task_files["rankings"], "ranking")
    assert main(["data", "validate", str(task_files["rankings"]), "--kind", "prompt"]) == 2
    assert f"{task_files['rankings']}:1: prompt: field" in capsys.readouterr().err


def test_data_import_hh(tmp_path, capsys):
    src = tmp_path / "hh.jsonl"
    rows = [
        {
            "chosen": "\n\nHuman: hi\n\nAssistant: hello",
            "rejected": "\n\nHuman: hi\n\nAssistant: go",
        },
        {"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: go"},
    ]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "pairs.jsonl"
    assert main(["data", "import-hh", str(src), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "wrote 1 comparisons" in captured.out and f"{src}:2" in captured.err
    assert main(["data", "import-hh", str(src), "--out", str(out), "--strict"]) == 2


def test_train_sft_then_generate_on_the_world(tmp_path, capsys):
    """`train-sft` learns the references (held-out loss falls), `generate` writes K
    completion records per prompt, the same seed giving the same file."""
    import torch

    from alignloop.loop import build_world

    torch.set_num_threads(1)
    paths = build_world(tmp_path / "world", seed=0, n_train=60, n_eval=4)
    sft = tmp_path / "sft"
    args = ["train-sft", "--model", str(paths["policy_init"]), "--prompts",
            str(paths["prompts_train"]), "--out", str(sft), "--epochs", "8", "--lr", "3e-3",
            "--batch-size", "8", "--eval-fraction", "0.2", "--eval-every", "6"]  # fmt: skip
    assert main(args) == 0
    result = json.loads((sft / "eval.json").read_text())
    log = [json.loads(x) for x in (sft / "metrics.jsonl").read_text().splitlines()]
    losses = [x["eval/loss"] for x in log if "eval/loss" in x]
    assert result["n_train"] == 48 and result["n_eval"] == 12
    assert losses[-1] < losses[0] - 0.5  # learning, measured on held-out documents
    outs = []
    for name in ("a", "b"):
        out = tmp_path / f"completions-{name}.jsonl"
        args = ["generate", "--policy", str(sft), "--prompts", str(paths["prompts_eval"]),
                "--out", str(out), "--k", "3", "--max-new-tokens", "20", "--seed", "1"]  # fmt: skip
        assert main(args) == 0
        outs.append(out)
    records = read_records(outs[0], "completion")
    assert len(records) == 12 and {r.policy for r in records} == {str(sft)}
    prompt_ids = [p.id for p in read_records(paths["prompts_eval"], "prompt")]
    assert [r.id for r in records] == [f"{i}-{j}" for i in prompt_ids for j in range(3)]
    assert outs[0].read_bytes() == outs[1].read_bytes()


def test_train_sft_names_the_prompt_without_a_reference(tmp_path, capsys):
    from alignloop.schema import Prompt

    prompts = tmp_path / "p.jsonl"
    write_records(prompts, [Prompt(id="a", prompt="x", reference="y"), Prompt(id="b", prompt="z")])
    code = main(["train-sft", "--model", "nowhere", "--prompts", str(prompts),
                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert code == 2
    assert "p.jsonl:2" in capsys.readouterr().err


def test_no_abbreviated_flags_and_a_wrong_flag_names_the_closest(capsys):
    """`generate --n 4` was taken for `--name 4`; now it is an error with the
    subcommand's usage and its nearest flags, and so is a typo, in every subcommand."""
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--policy", "p", "--prompts", "x", "--out", "y", "--n", "4"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "usage: alignloop generate" in err
    assert "unrecognized arguments: --n 4 (did you mean --name or --k?)" in err
    with pytest.raises(SystemExit):
        main(["train-ppo", "--policy", "p", "--temprature", "0.5"])
    assert "(did you mean --temperature?)" in capsys.readouterr().err
    for argv in (["world", "label", "--overlp", "2"], ["serve", "--por", "9"]):
        with pytest.raises(SystemExit):
            main(argv)
        err = capsys.readouterr().err
        assert f"usage: alignloop {argv[0]} " in err and "did you mean --" in err


def test_world_candidates_and_label_take_typed_options(tmp_path, capsys):
    """The world commands' flags are their configs' options, with a --config file."""
    from alignloop.world import make_prompts

    prompts, completions = tmp_path / "prompts.jsonl", tmp_path / "stand_in.jsonl"
    write_records(prompts, make_prompts(3, 0, id_prefix="t"))
    config = tmp_path / "candidates.yaml"
    config.write_text("k: 2\nseed: 3\n")
    argv = ["world", "candidates", "--prompts", str(prompts), "--out", str(completions),
            "--config", str(config)]  # fmt: skip
    assert main(argv) == 0
    assert len(read_records(completions, "completion")) == 2 * 3
    rankings = tmp_path / "rankings.jsonl"
    assert main(["world", "label", "--prompts", str(prompts), "--completions",
                 str(completions), "--out", str(rankings), "--overlap", "2"]) == 0  # fmt: skip
    by_prompt = {}  # --overlap 2: two labelers per prompt
    for r in read_records(rankings, "ranking"):
        by_prompt.setdefault(r.prompt_id, set()).add(r.labeler)
    assert len(by_prompt) == 3 and all(len(labelers) == 2 for labelers in by_prompt.values())
    assert main(["world", "label", "--completions", str(completions)]) == 2
    assert "missing required option(s): --prompts, --out" in capsys.readouterr().err


def test_demo_flags_are_its_config():
    from pathlib import Path

    from alignloop.cli import make_parser
    from alignloop.config import config_from_args
    from alignloop.loop import DemoConfig

    args = make_parser().parse_args(["demo", "--quick", "--out", "o", "--seed", "3"])
    assert config_from_args(DemoConfig, args) == DemoConfig(out=Path("o"), seed=3, quick=True)
    args = make_parser().parse_args(["demo", "--threads", "none"])
    assert config_from_args(DemoConfig, args) == DemoConfig(threads=None)
    with pytest.raises(SystemExit):  # the sizes of the README's figures are not flags
        make_parser().parse_args(["demo", "--n-train", "10"])


def test_score_writes_the_reward_of_every_completion(tiny_rm, tmp_path, capsys):
    from alignloop.loop import stand_in_completions
    from alignloop.models import RewardModel
    from alignloop.world import make_prompts

    prompts = make_prompts(2, 0, id_prefix="t")
    completions = stand_in_completions(prompts, k=2, seed=0)
    paths = {k: tmp_path / f"{k}.jsonl" for k in ("prompts", "completions")}
    write_records(paths["prompts"], prompts)
    write_records(paths["completions"], completions)
    out = tmp_path / "rewards.jsonl"
    assert main(["score", "--model", str(tiny_rm), "--data", str(paths["completions"]),
                 "--prompts", str(paths["prompts"]), "--out", str(out),
                 "--max-length", "64"]) == 0  # fmt: skip
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    by_id = {p.id: p for p in prompts}
    expected = RewardModel.from_pretrained(tiny_rm).score(
        [by_id[c.prompt_id].prompt for c in completions], [c.completion for c in completions],
        max_length=64,
    )  # fmt: skip
    assert [(r["id"], r["prompt_id"]) for r in rows] == [(c.id, c.prompt_id) for c in completions]
    assert [r["reward"] for r in rows] == pytest.approx(expected)


# The child records OpenMP's wait policy at the moment torch is first imported (OpenMP
# reads it then), runs `python -m alignloop ARGS`, and prints it with torch's threads.
_AT_TORCH_IMPORT = """
import builtins, os, runpy, sys
seen, real_import = {}, builtins.__import__
def spy(name, *args, **kwargs):
    if name.split(".")[0] == "torch" and "policy" not in seen:
        seen["policy"] = os.environ.get("OMP_WAIT_POLICY")
    return real_import(name, *args, **kwargs)
builtins.__import__ = spy
sys.argv = ["alignloop", *sys.argv[1:]]
try:
    runpy.run_module("alignloop", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
import torch
print(seen["policy"], torch.get_num_threads())
"""


def _at_torch_import(args: list[str], **env: str) -> tuple[str, int]:
    import os

    base = {k: v for k, v in os.environ.items()
            if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "ALIGNLOOP_THREADS")}  # fmt: skip
    out = subprocess.run(
        [sys.executable, "-c", _AT_TORCH_IMPORT, *args], env={**base, **env},
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return out[-2], int(out[-1])


def test_commands_run_with_a_passive_openmp_wait_policy_unless_the_user_sets_one(task_files):
    """Issue 17: spinning OpenMP threads make a busy machine several times slower; the
    console script sets OMP_WAIT_POLICY=PASSIVE before torch loads, keeps a user's own
    value, and --threads / $ALIGNLOOP_THREADS set torch's threads."""
    validate = ["data", "validate", str(task_files["prompts"]), "--kind", "prompt"]
    assert _at_torch_import(validate)[0] == "PASSIVE"
    assert _at_torch_import(["--threads", "3", *validate]) == ("PASSIVE", 3)
    assert _at_torch_import(validate, OMP_WAIT_POLICY="ACTIVE")[0] == "ACTIVE"
    assert _at_torch_import(validate, ALIGNLOOP_THREADS="5") == ("PASSIVE", 5)
    assert _at_torch_import(["--threads", "3", *validate], ALIGNLOOP_THREADS="5")[1] == 3


def test_threads_flag_is_checked_and_documented(task_files, capsys, monkeypatch):
    validate = ["data", "validate", str(task_files["prompts"]), "--kind", "prompt"]
    assert main(["--threads", "0", *validate]) == 2
    assert "--threads must be at least 1" in capsys.readouterr().err
    monkeypatch.setenv("ALIGNLOOP_THREADS", "two")
    assert main(validate) == 2
    assert "$ALIGNLOOP_THREADS must be a whole number" in capsys.readouterr().err
    text = " ".join(
        subprocess.run([sys.executable, "-m", "alignloop", "--help"], capture_output=True,
                       text=True, check=True).stdout.split()
    )  # fmt: skip
    assert "--threads N" in text and "OMP_WAIT_POLICY=PASSIVE" in text
    assert "ALIGNLOOP_THREADS" in text
