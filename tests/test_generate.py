"""Sampling: EOS truncation by hand, left padding, a pure temperature distribution."""

from __future__ import annotations

import pytest
import torch

from alignloop.generate import generate_completions, sample, truncate_after_eos
from alignloop.models import build_tiny_causal_lm, pad_left, tokenize_keep_end
from alignloop.world import build_tokenizer, make_prompts

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}
EOS, PAD = 1, 0


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_tiny_causal_lm(tokenizer, seed=0, **TINY)


def test_truncate_after_eos_by_hand():
    responses = torch.tensor(
        [
            [5, 6, EOS, 7, 8],  # EOS in the middle: 7 8 become padding
            [EOS, 5, EOS, 6, 7],  # only the first EOS counts
            [5, 6, 7, 8, 9],  # no EOS: all kept
            [5, 6, 7, 8, EOS],  # EOS last
        ]
    )
    ids, mask, has_eos = truncate_after_eos(responses, [EOS], PAD)
    assert ids.tolist() == [
        [5, 6, EOS, PAD, PAD],
        [EOS, PAD, PAD, PAD, PAD],
        [5, 6, 7, 8, 9],
        [5, 6, 7, 8, EOS],
    ]
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert has_eos.tolist() == [True, True, False, True]


def test_truncate_with_several_stop_ids_and_pad_equal_to_eos():
    ids, mask, has_eos = truncate_after_eos(torch.tensor([[4, 9, 3, 9]]), [3, 9], pad_id=9)
    assert ids.tolist() == [[4, 9, 9, 9]] and mask.tolist() == [[1, 1, 0, 0]]
    assert has_eos.tolist() == [True]


def test_pad_left_and_left_truncation(tokenizer):
    ids, mask = pad_left([[7, 8, 9], [5]], PAD)
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    rows, cut = tokenize_keep_end(tokenizer, ["a b c d e", "a b"], max_length=3)
    assert cut == 1
    assert rows[0] == tokenizer("c d e")["input_ids"]  # the start is cut, the end kept
    assert rows[1] == tokenizer("a b")["input_ids"]


def test_sample_shapes_masks_and_texts(model, tokenizer):
    prompts = [p.prompt for p in make_prompts(3, seed=0)]
    torch.manual_seed(0)
    s = sample(model, tokenizer, prompts, k=2, temperature=1.0, max_new_tokens=6)
    N, R = s.response_ids.shape
    assert N == 6 and R <= 6 and s.query_ids.shape[0] == 6
    assert s.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    lengths = s.response_mask.sum(1)
    for i in range(N):
        n = int(lengths[i])
        assert s.response_mask[i, :n].all() and not s.response_mask[i, n:].any()  # a prefix
        assert bool(s.has_eos[i]) == (s.response_ids[i, n - 1].item() == tokenizer.eos_token_id)
        text_ids = s.response_ids[i, : n - int(s.has_eos[i])].tolist()
        assert s.completions[i] == tokenizer.decode(text_ids, skip_special_tokens=True)
    # the prompts are left-padded: every row ends with a real prompt token
    assert s.query_mask[:, -1].all()


def test_sampling_ignores_the_models_own_generation_config(model, tokenizer):
    """A hub model's generation config may carry top_k or a repetition penalty: the
    samples must come from softmax(logits / T) all the same. With min_p=0.999 left in
    force, every sample of one prompt would be the same greedy text."""
    model.generation_config.min_p = 0.999
    try:
        torch.manual_seed(0)
        s = sample(
            model,
            tokenizer,
            ["the weather was cold . tl;dr :"],
            k=8,
            temperature=1.0,
            max_new_tokens=4,
        )
        assert len(set(s.completions)) > 1
        assert model.generation_config.min_p == 0.999  # restored after the call
    finally:
        model.generation_config.min_p = None


def test_sample_rejects_empty_input(model, tokenizer):
    with pytest.raises(ValueError, match="no prompts"):
        sample(model, tokenizer, [], max_new_tokens=2)


def test_generate_completions_records(model, tokenizer):
    prompts = make_prompts(3, seed=1)
    torch.manual_seed(0)
    records = generate_completions(
        model, tokenizer, prompts, k=2, max_new_tokens=3, batch_size=2, policy_name="tiny"
    )
    assert [r.id for r in records] == [f"{p.id}-{j}" for p in prompts for j in range(2)]
    assert all(r.policy == "tiny" and r.prompt_id in r.id for r in records)
