"""The whole path on a real pretrained model and its real tokenizer.

../shared/models/stories260k is a TinyStories Llama (260K parameters) in the ordinary
Hugging Face layout: a SentencePiece-style BPE with byte fallback that adds BOS, NO
pad token, no chat template. Generation (EOS as pad: the same completion alone and
left-padded among longer prompts, no warnings), SFT (the held-out loss falls), LoRA,
PPO with a real sentiment reward (VADER, examples/sentiment.py), `alignloop eval`,
and the story example's scripted labeler. Read from ../shared, never copied into the
repository; skipped with the reason when it is absent.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import warnings
from pathlib import Path

import pytest
import torch

from alignloop.cli import main
from alignloop.io import read_records, write_records
from alignloop.schema import Prompt

REPO = Path(__file__).resolve().parents[1]
STORIES = REPO.parent / "shared" / "models" / "stories260k"
SENTIMENT = REPO / "examples" / "sentiment.py"
SCRIPT = REPO / "scripts" / "story_sentiment.py"

OPENINGS = [
    "Once upon a time, there was a little girl named Lily. She",
    "Tom had a red ball. One day,",
    "The sun was hot.",
    "Sue and her mom went to the park to play. They saw a big dog and",
    "Max was a small cat who liked to sleep in the sun. One morning, he woke up and",
    "A bird sat on a tree.",
]
HAPPY_END = " They played all day and were very happy. The end."


@pytest.fixture(scope="module")
def stories() -> Path:
    if not (STORIES / "config.json").exists():
        pytest.skip(f"{STORIES} is absent (it lives in ../shared, outside the repository)")
    return STORIES


@pytest.fixture(scope="module")
def model(stories):
    from alignloop.models import load_policy

    policy, tokenizer = load_policy(stories)
    return policy.eval(), tokenizer


def _vader():
    if importlib.util.find_spec("vaderSentiment") is None:
        pytest.skip("vaderSentiment is not installed (pip install -e '.[examples]')")
    from alignloop.config import load_callable

    return load_callable(f"{SENTIMENT}:rank", "test").__globals__


def _prompts(path: Path, texts, *, reference: str | None = None) -> Path:
    write_records(
        path, [Prompt(id=f"s{i}", prompt=t, reference=reference) for i, t in enumerate(texts)]
    )
    return path


def _greedy(policy, tokenizer, rows: list[list[int]], n: int) -> torch.Tensor:
    from alignloop.generate import decode, stop_token_ids
    from alignloop.models import pad_left

    ids, mask = pad_left(rows, tokenizer.pad_token_id)
    return decode(
        policy, ids, mask, max_new_tokens=n, stop_ids=stop_token_ids(policy, tokenizer),
        pad_id=tokenizer.pad_token_id, pick=lambda logits: logits.argmax(-1, keepdim=True),
    )  # fmt: skip


# --- the tokenizer and generation ------------------------------------------------------


def test_the_tokenizer_has_no_pad_token_and_eos_serves(stories, model):
    from transformers import AutoTokenizer

    raw = AutoTokenizer.from_pretrained(stories)
    assert raw.pad_token is None and raw.chat_template is None  # what the model ships
    _, tokenizer = model
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == 2
    assert tokenizer("Once upon a time")["input_ids"][0] == tokenizer.bos_token_id == 1


def test_greedy_decoding_reproduces_the_conversion_check(stories, model):
    """conversion.json holds the greedy story from BOS that the converted weights gave
    under plain transformers: the sampler's KV-cached loop gives the same text."""
    policy, tokenizer = model
    expected = json.loads((stories / "conversion.json").read_text())["greedy_from_bos"]
    out = _greedy(policy, tokenizer, [[tokenizer.bos_token_id]], 40)
    text = tokenizer.decode(out[0], skip_special_tokens=True)
    assert len(text) > 60 and expected.startswith(text)


def test_a_prompt_continues_the_same_alone_and_left_padded(model):
    """EOS doubles as pad, so a padded prompt holds EOS ids the mask must hide: the
    shortest prompt's greedy continuation, alone and left-padded beside longer ones,
    is the same tokens, and its first-step logits agree to float32 rounding."""
    from alignloop.models import pad_left

    policy, tokenizer = model
    rows = [tokenizer(t)["input_ids"] for t in OPENINGS]
    short = min(range(len(rows)), key=lambda i: len(rows[i]))
    assert len(rows[short]) + 8 < max(len(r) for r in rows)  # really padded
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no pad-token or attention-mask warnings
        batched = _greedy(policy, tokenizer, rows, 24)
        for i, row in enumerate(rows):
            alone = _greedy(policy, tokenizer, [row], 24)
            n = alone.shape[1]
            assert torch.equal(batched[i, :n], alone[0]), OPENINGS[i]
    ids, mask = pad_left(rows, tokenizer.pad_token_id)
    assert (ids[short, : int((mask[short] == 0).sum())] == tokenizer.eos_token_id).all()
    with torch.no_grad():
        from alignloop.models import position_ids_from_mask

        padded = policy(input_ids=ids, attention_mask=mask,
                        position_ids=position_ids_from_mask(mask)).logits[short, -1]  # fmt: skip
        single = policy(input_ids=torch.tensor([rows[short]])).logits[0, -1]
    torch.testing.assert_close(padded, single, atol=1e-4, rtol=1e-4)


def test_generate_cli_writes_k_completions_without_warnings(stories, tmp_path, recwarn):
    prompts = _prompts(tmp_path / "p.jsonl", OPENINGS[:3])
    out = tmp_path / "c.jsonl"
    argv = ["generate", "--policy", str(stories), "--prompts", str(prompts), "--out", str(out),
            "--k", "2", "--max-new-tokens", "16", "--seed", "1"]  # fmt: skip
    assert main(argv) == 0
    assert not [str(w.message) for w in recwarn.list]
    records = read_records(out, "completion")
    assert [c.id for c in records] == [f"s{i}-{j}" for i in range(3) for j in range(2)]
    assert all(c.completion.strip() for c in records)
    again = tmp_path / "again.jsonl"
    assert main([*argv[:-4], "--out", str(again), "--k", "2", "--max-new-tokens", "16",
                 "--seed", "1"]) == 0  # fmt: skip
    assert again.read_text() == out.read_text()  # seeded


# --- training -----------------------------------------------------------------------------


def _sft_data(tmp_path: Path) -> Path:
    """36 openings that all end the same happy way: 30 train, 6 held out."""
    texts = [f"{o} Then {name} smiled." for o in OPENINGS for name in
             ("Lily", "Tom", "Sue", "Max", "Ben", "Amy")]  # fmt: skip
    return _prompts(tmp_path / "sft.jsonl", texts, reference=HAPPY_END.strip())


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("lora", [0, 4], ids=["full", "lora"])
def test_sft_lowers_the_held_out_loss(stories, tmp_path, lora):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    out = tmp_path / "sft"
    argv = ["train-sft", "--model", str(stories), "--prompts", str(_sft_data(tmp_path)),
            "--out", str(out), "--lr", "3e-3" if lora else "1e-3", "--batch-size", "6",
            "--epochs", "2", "--eval-fraction", "0.17", "--eval-every", "0",
            "--save-every", "0", "--warmup-ratio", "0", "--mixed-precision", "no",
            "--lora-r", str(lora)]  # fmt: skip
    assert main(argv) == 0
    final = json.loads((out / "eval.json").read_text())
    assert final["n_eval"] == 6 and final["steps"] == 10
    assert _log(out)[-1]["eval/eval_loss"] == final["eval_loss"]
    before, after = load_file(stories / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # LoRA merged: a plain Llama folder
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    linear = {k for k in before if k.endswith("_proj.weight")}  # LoRA's: 7 per layer
    assert len(linear) == 35 and changed == (linear if lora else set(before))
    # the start model's held-out loss, measured the trainer's way (tokens of the target)
    base = _held_out_loss(stories, out, tmp_path)
    assert final["eval_loss"] < base - 0.3, (base, final["eval_loss"])
    AutoModelForCausalLM.from_pretrained(out)  # loads under plain transformers


def _held_out_loss(stories: Path, out: Path, tmp_path: Path) -> float:
    """The start model's held-out loss on the same split: one step at lr 1e-12 (AdamW
    moves each weight by ~1e-12: the loss is the start model's to float32 rounding)."""
    zero = tmp_path / "zero"
    argv = ["train-sft", "--model", str(stories), "--prompts", str(tmp_path / "sft.jsonl"),
            "--out", str(zero), "--lr", "1e-12", "--batch-size", "6", "--max-steps", "1",
            "--eval-fraction", "0.17", "--eval-every", "0", "--save-every", "0",
            "--warmup-ratio", "0", "--mixed-precision", "no"]  # fmt: skip
    assert main(argv) == 0
    return json.loads((zero / "eval.json").read_text())["eval_loss"]


@pytest.fixture(scope="module")
def ppo_run(stories, tmp_path_factory) -> Path:
    """Three PPO steps from the story model, VADER's sentiment as the reward."""
    _vader()
    root = tmp_path_factory.mktemp("ppo")
    prompts = _prompts(root / "p.jsonl", OPENINGS * 2)
    out = root / "ppo"
    argv = ["train-ppo", "--policy", str(stories), "--prompts", str(prompts), "--out", str(out),
            "--reward-fn", f"{SENTIMENT}:reward", "--max-steps", "3", "--batch-size", "4",
            "--minibatch-size", "2", "--max-new-tokens", "12", "--temperature", "1.0",
            "--lr", "3e-4", "--missing-eos-score", "none", "--save-every", "0",
            "--sample-every", "0", "--mixed-precision", "no"]  # fmt: skip
    assert main(argv) == 0
    return out


def test_ppo_from_the_pretrained_model(stories, ppo_run):
    from safetensors.torch import load_file

    steps = [x for x in _log(ppo_run) if "ppo/reward_mean" in x]
    assert [x["step"] for x in steps] == [1, 2, 3]
    assert steps[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-5)  # starts at the reference
    figures = [v for x in steps for k, v in x.items() if k.startswith("ppo/")]
    assert all(torch.isfinite(torch.tensor(float(v))) for v in figures)
    assert all(-1 <= x["ppo/reward_mean"] <= 1 for x in steps)  # VADER's range
    before = load_file(stories / "model.safetensors")
    after = load_file(ppo_run / "model.safetensors")
    assert before.keys() == after.keys()
    assert all(not torch.equal(before[k], after[k]) for k in before if "layers.0.self_attn" in k)


def test_ppo_with_lora_and_a_value_head_on_the_pretrained_model(stories, tmp_path):
    """LoRA PPO (the reference is the adapter switched off) with a value head on the
    policy: the merged folder is a plain Llama whose linear layers alone moved."""
    from safetensors.torch import load_file

    _vader()
    prompts = _prompts(tmp_path / "p.jsonl", OPENINGS)
    out = tmp_path / "ppo-lora"
    argv = ["train-ppo", "--policy", str(stories), "--prompts", str(prompts), "--out", str(out),
            "--reward-fn", f"{SENTIMENT}:reward", "--max-steps", "2", "--batch-size", "3",
            "--minibatch-size", "3", "--max-new-tokens", "8", "--temperature", "1.0",
            "--lr", "1e-3", "--lora-r", "4", "--critic", "policy-head",
            "--missing-eos-score", "none", "--save-every", "0", "--sample-every", "0",
            "--mixed-precision", "no"]  # fmt: skip
    assert main(argv) == 0
    steps = [x for x in _log(out) if "ppo/reward_mean" in x]
    assert [x["step"] for x in steps] == [1, 2] and steps[0]["ppo/kl"] == pytest.approx(0, abs=1e-5)
    before, after = load_file(stories / "model.safetensors"), load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # merged, no value head in the policy's folder
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {k for k in before if k.endswith("_proj.weight")}


def test_eval_against_the_start_model(stories, ppo_run, tmp_path):
    """`alignloop eval` with the sentiment judge: the start model against itself has
    KL 0 and the same samples (one seed); the tuned policy has a positive KL."""
    _vader()
    prompts = _prompts(tmp_path / "held.jsonl", OPENINGS[:4])

    def evaluate(policy: Path, out: Path) -> dict:
        argv = ["eval", "--policy", str(policy), "--reference", str(stories), "--prompts",
                str(prompts), "--out", str(out), "--judge", f"{SENTIMENT}:judge",
                "--judge-name", "sentiment", "--k", "2", "--temperature", "1.0",
                "--max-new-tokens", "12", "--no-report", "--device", "cpu"]  # fmt: skip
        assert main(argv) == 0
        return json.loads((out / "eval.json").read_text())["policies"]

    same = evaluate(stories, tmp_path / "same")
    assert same["policy"]["kl_mean"] == pytest.approx(0.0, abs=1e-5)
    assert same["policy"]["sentiment_mean"] == same["reference"]["sentiment_mean"]
    texts = {
        name: [c.completion for c in read_records(tmp_path / "same" / f"completions_{name}.jsonl",
                                                   "completion")]
        for name in ("policy", "reference")
    }  # fmt: skip
    assert texts["policy"] == texts["reference"] and len(texts["policy"]) == 8
    tuned = evaluate(ppo_run, tmp_path / "tuned")
    assert tuned["policy"]["kl_mean"] > 0.01
    assert tuned["policy"]["n"] == 8 and -1 <= tuned["policy"]["sentiment_mean"] <= 1


# --- the story example: VADER and the scripted labeler -----------------------------------


def test_sentiment_reward_and_judge():
    vader = _vader()
    happy, sad = "She was very happy and loved her new dog.", "He was sad and cried. It hurt."
    scores = vader["reward"](["p", "p", "p"], [happy, sad, ""])
    assert scores[0] > 0.5 and scores[1] < -0.3 and scores[2] == 0.0
    assert vader["judge"](Prompt(id="x", prompt="p"), happy) == scores[0]
    with pytest.raises(ValueError, match="2 prompts for 1"):
        vader["reward"](["a", "b"], [happy])


def test_the_scripted_labeler_ranks_happiest_first_with_ties():
    from alignloop.feedback.pairs import rankings_to_pairs
    from alignloop.schema import Completion

    vader = _vader()
    texts = {"a": "It was a sad, bad day.", "b": "They were so happy!", "c": "A cat.",
             "d": "The dog sat."}  # fmt: skip
    completions = [Completion(id=f"p-{k}", prompt_id="p", completion=v) for k, v in texts.items()]
    ranking = vader["rank"]("p", completions)
    assert ranking.ranking == [["p-b"], ["p-c", "p-d"], ["p-a"]]  # neutral texts tie
    pairs = rankings_to_pairs([ranking], completions, [Prompt(id="p", prompt="Once")]).pairs
    assert len(pairs) == 5  # C(4, 2) minus the tie
    assert all(vader["sentiment"](p.chosen) > vader["sentiment"](p.rejected) for p in pairs)


@pytest.mark.slow
def test_the_story_script_runs_the_learned_reward_path_at_tiny_size(stories, tmp_path, monkeypatch):
    """scripts/story_sentiment.py --tiny: openings, generate, scripted rankings, pairs,
    train-rm from the story model, train-ppo --reward-model, eval; figures.json."""
    _vader()
    spec = importlib.util.spec_from_file_location("story_sentiment", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "story_sentiment", script)  # its dataclasses need it
    spec.loader.exec_module(script)
    out = tmp_path / "run"
    assert script.main(["--tiny", "--out", str(out)]) == 0
    figures = json.loads((out / "figures.json").read_text())
    commands = [c["command"].split()[1] for c in figures["commands"]]
    assert commands == ["train-ppo", "eval", "generate", "feedback", "train-rm", "train-ppo",
                        "eval"]  # fmt: skip
    learned = figures["learned"]
    assert learned["pairs"] > 0 and 0 <= learned["kl_mean"]
    for key in ("sentiment_start", "sentiment_tuned", "difference"):
        assert learned[key]["n"] == 4 and figures["direct"][0][key]["n"] == 4
    rankings = read_records(out / "learned" / "rankings.jsonl", "ranking")
    assert len(rankings) == 12 and {r.labeler for r in rankings} == {"vader"}
    assert (out / "learned" / "rm" / "config.json").exists()
    assert [s["policy"] for s in figures["samples"]] == ["start"] * 3 + ["tuned"] * 3
