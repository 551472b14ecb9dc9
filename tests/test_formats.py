"""The ecosystem's preference formats (issue 15): TRL's standard, implicit-prompt and
conversational pairs read by `io.read_comparisons` (JSONL, Parquet, `datasets`),
files as TRL's documentation writes them train a reward model as they are, and
alignloop's exports are in TRL's formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from alignloop.io import (
    IGNORED_PAIR_COLUMNS,
    extract_prompt,
    from_dataset,
    read_comparisons,
    read_records,
    write_records,
)
from alignloop.schema import Comparison, Message, Prompt, SchemaError

SKY = [{"role": "user", "content": "What color is the sky?"}]
BLUE = [{"role": "assistant", "content": "It is blue."}]
GREEN = [{"role": "assistant", "content": "It is green."}]

# The examples of TRL's "Dataset formats" page, one per preference format.
TRL_ROWS = {
    "standard": {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
    "implicit": {"chosen": "The sky is blue.", "rejected": "The sky is green."},
    "conversational": {"prompt": SKY, "chosen": BLUE, "rejected": GREEN},
    "conversational_implicit": {"chosen": SKY + BLUE, "rejected": SKY + GREEN},
}
TEXT_PAIR = ("The sky is", " blue.", " green.")
CONVERSATION_PAIR = (
    tuple(Message(**m) for m in SKY),
    tuple(Message(**m) for m in BLUE),
    tuple(Message(**m) for m in GREEN),
)
EXPECTED = {
    "standard": TEXT_PAIR,
    "implicit": TEXT_PAIR,
    "conversational": CONVERSATION_PAIR,
    "conversational_implicit": CONVERSATION_PAIR,
}


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("write", [_jsonl, _parquet], ids=["jsonl", "parquet"])
@pytest.mark.parametrize("name", list(TRL_ROWS))
def test_each_trl_format_is_read(tmp_path, name, write):
    path = write(tmp_path / f"{name}.{write.__name__[1:]}", [TRL_ROWS[name]] * 2)
    result = read_comparisons(path)
    assert len(result.comparisons) == 2 and not result.skipped
    pair = result.comparisons[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == EXPECTED[name]


def test_implicit_prompts_are_cut_as_trl_cuts_them():
    # TRL's extract_prompt: where the texts first differ; a space before goes after
    assert extract_prompt("The sky is blue.", "The sky is green.") == TEXT_PAIR
    assert extract_prompt("Hi there", "Hi you") == ("Hi", " there", " you")
    assert extract_prompt("abc", "abcd") == ("ab", "c", "cd")  # neither side empty
    assert extract_prompt("yes", "no") == ("", "yes", "no")
    assert extract_prompt(SKY + BLUE, SKY + GREEN) == (SKY, BLUE, GREEN)


def test_hh_files_keep_their_own_split(tmp_path):
    h = "\n\nHuman: What color is the sky?\n\nAssistant:"
    path = _jsonl(tmp_path / "hh.jsonl", [{"chosen": h + " It is blue.", "rejected": h + " It is"
                                           " green."}])  # fmt: skip
    pair = read_comparisons(path).comparisons[0]
    assert (pair.prompt, pair.chosen, pair.rejected) == (h, " It is blue.", " It is green.")
    assert pair.source == "hh-rlhf"


def test_the_hubs_extra_columns_are_dropped_and_named(tmp_path):
    # trl-lib/ultrafeedback_binarized: implicit conversations with their ratings;
    # HuggingFaceH4/ultrafeedback_binarized: a text prompt the conversations repeat
    rows = [
        {**TRL_ROWS["conversational_implicit"], "score_chosen": 8.0, "score_rejected": 3.5},
        {"prompt": "What color is the sky?", "prompt_id": "abc", "chosen": SKY + BLUE,
         "rejected": SKY + GREEN, "messages": SKY + BLUE, "score_chosen": 9.0,
         "score_rejected": 2.0},
        {**TRL_ROWS["standard"], "id": 7},
    ]  # fmt: skip
    result = read_comparisons(_jsonl(tmp_path / "uf.jsonl", rows))
    assert result.ignored_columns == ["id", "messages", "score_chosen", "score_rejected"]
    assert set(result.ignored_columns) <= IGNORED_PAIR_COLUMNS
    first, second, third = result.comparisons
    assert (first.prompt, first.chosen, first.rejected) == CONVERSATION_PAIR
    assert (second.prompt, second.chosen, second.rejected) == CONVERSATION_PAIR
    assert second.prompt_id == "abc"
    assert (third.prompt, third.chosen, third.rejected) == TEXT_PAIR


def test_a_misspelt_column_is_still_an_error(tmp_path):
    path = _jsonl(tmp_path / "typo.jsonl", [{**TRL_ROWS["standard"], "margn": 1.0}])
    with pytest.raises(SchemaError, match=rf"{path}:1: comparison: field 'margn': unknown field"):
        read_comparisons(path)


def test_bad_conversational_rows_name_file_and_line(tmp_path):
    rows = [
        TRL_ROWS["conversational"],
        {"prompt": SKY, "chosen": [{"role": "bot", "content": "x"}], "rejected": GREEN},
        {"prompt": "The sky is", "chosen": BLUE, "rejected": " green."},
        {"chosen": [{"role": "user", "content": "a"}] + BLUE, "rejected": SKY + GREEN},
    ]
    with pytest.raises(SchemaError) as e:
        read_comparisons(_jsonl(tmp_path / "bad.jsonl", rows))
    problems = e.value.problems
    assert len(problems) == 3
    assert "bad.jsonl:2: comparison: field 'chosen': message 1: role 'bot'" in problems[0]
    assert "bad.jsonl:3: comparison: a text prompt takes text completions" in problems[1]
    assert "bad.jsonl:4: comparison: field 'prompt': prompt is an empty list" in problems[2]


def test_a_dataset_in_any_format_is_read():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_list([TRL_ROWS["conversational_implicit"]] * 3)
    pairs = from_dataset(ds, Comparison)
    assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [CONVERSATION_PAIR] * 3


def test_text_exports_are_byte_identical_and_conversations_are_trls(tmp_path):
    text = Comparison(prompt="The sky is", chosen=" blue.", rejected=" green.", margin=1.0)
    conv = Comparison(prompt=SKY, chosen="It is blue.", rejected="It is green.", prompt_id="p")
    write_records(tmp_path / "text.jsonl", [text])
    assert (tmp_path / "text.jsonl").read_text() == (
        '{"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 1.0}\n'
    )
    write_records(tmp_path / "conv.jsonl", [conv])
    row = json.loads((tmp_path / "conv.jsonl").read_text())
    assert row == {**TRL_ROWS["conversational"], "prompt_id": "p"}  # texts became turns
    assert read_comparisons(tmp_path / "conv.jsonl").comparisons == [conv]
    for suffix in ("jsonl", "parquet"):  # prompts files of conversations round-trip too
        prompts = [Prompt(id="a", prompt=SKY), Prompt(id="b", prompt=SKY + BLUE + SKY)]
        write_records(tmp_path / f"p.{suffix}", prompts)
        assert read_records(tmp_path / f"p.{suffix}", Prompt) == prompts
    with pytest.raises(SchemaError, match="mix texts and conversations"):
        write_records(tmp_path / "mixed.parquet", [text, conv])


def test_pairs_of_conversational_rankings_export_in_trls_format(tmp_path, small_task):
    from alignloop.feedback import rankings_to_pairs

    prompts, completions, rankings = small_task
    prompts = [Prompt(id=p.id, prompt=[{"role": "user", "content": p.prompt}]) for p in prompts]
    pairs = rankings_to_pairs(rankings, completions, prompts).pairs
    write_records(tmp_path / "pairs.jsonl", pairs)
    for line in (tmp_path / "pairs.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert _trl_format(row) == "conversational"


def _trl_format(row: dict) -> str:
    """TRL's reading of a row (`is_conversational`, `maybe_extract_prompt`): each of
    prompt, chosen and rejected a list of {role, content} messages, or all texts."""
    kinds = {
        isinstance(row[k], list) and all(set(m) == {"role", "content"} for m in row[k])
        for k in ("prompt", "chosen", "rejected")
    }
    assert len(kinds) == 1, f"mixed texts and messages: {row}"
    return "conversational" if kinds.pop() else "standard"


@pytest.mark.parametrize("name", list(TRL_ROWS))
def test_trl_files_train_a_reward_model_as_they_are(chat_models, tmp_path, name):
    from alignloop.train.reward import RewardConfig, train_reward_model

    path = _jsonl(tmp_path / f"{name}.jsonl", [TRL_ROWS[name]] * 8)
    config = RewardConfig(model=str(chat_models["rm"]), data=path, out=tmp_path / "rm",
                          max_steps=2, batch_size=2, eval_fraction=0.0, norm_samples=4,
                          mixed_precision="no")  # fmt: skip
    train_reward_model(config)
    assert (tmp_path / "rm" / "config.json").exists()


@pytest.mark.parametrize("prompt", ["The sky is", SKY], ids=["standard", "conversational"])
def test_exports_train_in_trl(chat_models, tmp_path, prompt):
    """A few RewardTrainer steps on an alignloop export (TRL is no dependency: run
    with it installed, e.g. `pip install --target DIR trl --no-deps` and PYTHONPATH=DIR;
    passed with TRL 1.16)."""
    trl = pytest.importorskip("trl", reason="TRL is not installed in this environment")
    datasets = pytest.importorskip("datasets")
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pairs = [
        Comparison(prompt=prompt, chosen=f" blue {i}.", rejected=" green.", prompt_id=str(i),
                   margin=1.0, labeler="ann", criterion="overall", source="test")
        for i in range(8)
    ]  # fmt: skip
    write_records(tmp_path / "pairs.jsonl", pairs)
    dataset = datasets.load_dataset("json", data_files=str(tmp_path / "pairs.jsonl"))["train"]
    model = AutoModelForSequenceClassification.from_pretrained(chat_models["rm"], num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(chat_models["rm"])
    args = trl.RewardConfig(output_dir=str(tmp_path / "trl"), max_steps=2,
                            per_device_train_batch_size=2, report_to=[], use_cpu=True)  # fmt: skip
    trainer = trl.RewardTrainer(model=model, args=args, train_dataset=dataset,
                                processing_class=tokenizer)  # fmt: skip
    trainer.train()
    assert trainer.state.global_step == 2


# TRL's prompt-only and prompt-completion rows (its "Dataset formats" page): no ids.
TRL_PROMPTS = {
    "prompt_only": {"prompt": "The sky is"},
    "conversational_prompt_only": {"prompt": SKY},
    "prompt_completion": {"prompt": "The sky is", "completion": " blue."},
    "conversational_prompt_completion": {"prompt": SKY, "completion": BLUE},
}


@pytest.mark.parametrize("write", [_jsonl, _parquet], ids=["jsonl", "parquet"])
@pytest.mark.parametrize("name", list(TRL_PROMPTS))
def test_trl_prompt_files_are_read(tmp_path, name, write):
    from alignloop.io import read_prompts

    row = TRL_PROMPTS[name]
    path = write(tmp_path / f"{name}.{write.__name__[1:]}", [row, row])
    prompts = read_prompts(path)
    assert [p.id for p in prompts] == ["1", "2"]  # line (or row) numbers
    want = tuple(Message(**m) for m in SKY) if name.startswith("conv") else "The sky is"
    assert prompts[0].prompt == want
    reference = {"prompt_completion": " blue.", "conversational_prompt_completion": "It is blue."}
    assert prompts[0].reference == reference.get(name)


def test_prompt_files_with_ids_and_typos_read_as_before(tmp_path):
    from alignloop.io import read_prompts

    path = _jsonl(tmp_path / "p.jsonl", [{"id": "a", "prompt": "x", "referense": "y"}])
    with pytest.raises(SchemaError, match=rf"{path}:1: prompt: field 'referense': unknown field"):
        read_prompts(path)
    path = _jsonl(tmp_path / "q.jsonl", [{"id": "a", "prompt": "x", "reference": "y"}])
    assert read_prompts(path) == read_records(path, Prompt)


def test_trl_prompt_completion_files_train_sft_and_generate(chat_models, tmp_path):
    from alignloop.generate import generate_file
    from alignloop.train.sft import SFTConfig, train_sft

    row = TRL_PROMPTS["conversational_prompt_completion"]
    path = _jsonl(tmp_path / "sft.jsonl", [row] * 4)
    config = SFTConfig(model=str(chat_models["policy"]), prompts=path, out=tmp_path / "sft",
                       max_steps=1, batch_size=2, eval_fraction=0.0,
                       mixed_precision="no")  # fmt: skip
    assert train_sft(config)
    out = tmp_path / "completions.jsonl"
    prompts = _jsonl(tmp_path / "prompts.jsonl", [TRL_PROMPTS["conversational_prompt_only"]] * 2)
    generate_file(tmp_path / "sft", prompts, out, k=1, max_new_tokens=3, show_progress=False)
    assert [c.prompt_id for c in read_records(out, "completion")] == ["1", "2"]
