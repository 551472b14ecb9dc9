"""Sampling: EOS truncation by hand, left padding, a pure temperature distribution."""

from __future__ import annotations

import pytest
import torch

from alignloop import generate as gen
from alignloop.generate import decode, draw, generate_completions, sample, truncate_after_eos
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


@pytest.mark.parametrize("own_loop", [True, False], ids=["decode", "transformers-generate"])
def test_sampling_ignores_the_models_own_generation_config(model, tokenizer, own_loop, monkeypatch):
    """A hub model's generation config may carry top_k or a repetition penalty: the
    samples must come from softmax(logits / T) all the same. With min_p=0.999 left in
    force, every sample of one prompt would be the same greedy text. Both paths: the
    own KV-cached loop, and `generate` for models without a standard cache."""
    monkeypatch.setattr(gen, "_has_standard_cache", lambda m: own_loop)
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


def test_generate_completions_reports_progress_per_batch_and_samples_the_same(model, tokenizer):
    prompts = make_prompts(5, seed=1)
    torch.manual_seed(0)
    plain = generate_completions(model, tokenizer, prompts, k=2, max_new_tokens=3, batch_size=2)
    done: list[int] = []
    torch.manual_seed(0)
    watched = generate_completions(
        model, tokenizer, prompts, k=2, max_new_tokens=3, batch_size=2, progress=done.append
    )
    assert done == [2, 2, 1]  # prompts per batch
    assert watched == plain


def _ragged_prompts(tokenizer):
    texts = [p.prompt for p in make_prompts(4, seed=3)]
    rows = [tokenizer(t)["input_ids"][: 4 + 3 * i] for i, t in enumerate(texts)]  # 4..13 tokens
    return pad_left(rows, PAD)


def test_decode_continues_exactly_as_generate_does(model, tokenizer):
    """The KV-cached loop against transformers' `generate` on left-padded prompts of
    four lengths, both drawing with torch.multinomial from the same seed: the same
    tokens, the same stops and padding. The stop id is a token one row samples early,
    so rows stop at different steps."""
    from transformers import GenerationConfig

    ids, mask = _ragged_prompts(tokenizer)

    def hf(stop_ids, min_new):
        config = gen.sampling_config(temperature=1.0, max_new_tokens=12, pad_id=PAD,
                                     stop_ids=stop_ids)  # fmt: skip
        config.min_new_tokens = min_new
        saved, model.generation_config = model.generation_config, GenerationConfig()
        try:
            torch.manual_seed(5)
            return model.generate(input_ids=ids, attention_mask=mask,
                                  generation_config=config)[:, ids.shape[1]:]  # fmt: skip
        finally:
            model.generation_config = saved

    multinomial = lambda logits: torch.multinomial(torch.softmax(logits.float(), -1), 1)  # noqa: E731
    with torch.inference_mode():
        free = hf([EOS], min_new=12)  # no row can stop: 12 tokens each
        stop = int(free[1, 2])
        expected = hf([stop], min_new=0)
        torch.manual_seed(5)
        got = decode(model, ids, mask, max_new_tokens=12, stop_ids=[stop], pad_id=PAD,
                     pick=multinomial)  # fmt: skip
    assert got.tolist() == expected.tolist()
    firsts = [row.index(stop) if stop in row else None for row in got.tolist()]
    assert firsts[1] is not None and firsts[1] <= 2
    for row, first in zip(got.tolist(), firsts, strict=True):
        if first is not None:
            assert all(t == PAD for t in row[first + 1 :])  # padded after its stop
    assert len(set(free.flatten().tolist())) > 4  # varied samples, not one token repeated


def test_decode_matches_a_full_forward_pass(model, tokenizer):
    """What the cache computes step by step is what one forward pass over prompt +
    response computes: the log-probability of every sampled token agrees (what PPO's
    importance ratios rely on)."""
    from alignloop.losses import logprobs_from_logits
    from alignloop.models import position_ids_from_mask

    ids, mask = _ragged_prompts(tokenizer)
    steps = []

    def pick(logits):
        steps.append(torch.log_softmax(logits.float(), -1))
        return draw(logits, 1.0)

    torch.manual_seed(0)
    with torch.inference_mode():
        new = decode(model, ids, mask, max_new_tokens=8, stop_ids=[EOS], pad_id=PAD, pick=pick)
        full_ids = torch.cat([ids, new], 1)
        full_mask = torch.cat([mask, torch.ones_like(new)], 1)
        logits = model(input_ids=full_ids, attention_mask=full_mask,
                       position_ids=position_ids_from_mask(full_mask)).logits  # fmt: skip
    Q = ids.shape[1]
    full = logprobs_from_logits(logits[:, Q - 1 : -1].float(), new)  # (N, R)
    cached = torch.stack([s.gather(1, new[:, t : t + 1])[:, 0] for t, s in enumerate(steps)], 1)
    assert torch.allclose(full, cached, atol=1e-4)


def test_sample_keeps_the_log_probabilities_a_full_pass_computes(model, tokenizer, monkeypatch):
    """Issue 17: sample(logprobs=True) draws the same tokens as without and keeps each
    token's log-probability and entropy at softmax(logits / T) as PPO's forward pass
    over prompt + response computes them (`models.response_logits`), to 1e-5 (9.5e-7
    measured at most); 0 after a response's stop, where rows stop at different steps.
    transformers' `generate` keeps none."""
    from alignloop.losses import entropy_from_logits, logprobs_from_logits
    from alignloop.models import ResponseBatch, response_logits

    ids, mask = _ragged_prompts(tokenizer)
    rows = [r[m.bool()].tolist() for r, m in zip(ids, mask, strict=True)]
    torch.manual_seed(0)
    free = sample(model, tokenizer, rows, k=2, temperature=0.7, max_new_tokens=10, stop_ids=[EOS])
    stops = free.response_ids[:4, 2].tolist()  # rows 0-3 stop by their third token
    got = {}
    for keep in (False, True):
        torch.manual_seed(0)
        got[keep] = sample(model, tokenizer, rows, k=2, temperature=0.7, max_new_tokens=10,
                           stop_ids=stops, logprobs=keep)  # fmt: skip
    kept = got[True]
    assert got[False].logprobs is None and got[False].entropy is None
    assert torch.equal(kept.response_ids, got[False].response_ids)
    on = kept.response_mask.bool()  # (N, R)
    assert len(set(on.sum(1).tolist())) > 1 and not on.all()  # padding after some stops
    batch = ResponseBatch(kept.query_ids, kept.query_mask, kept.response_ids, kept.response_mask)
    with torch.inference_mode():
        logits, _ = response_logits(model, batch, 0.7)  # (N, R, V) / T
        at_one, _ = response_logits(model, batch, 1.0)
    full = logprobs_from_logits(logits, kept.response_ids)  # (N, R)
    full_at_one = logprobs_from_logits(at_one, kept.response_ids)
    torch.testing.assert_close(kept.logprobs[on], full[on], atol=1e-5, rtol=0)
    torch.testing.assert_close(kept.entropy[on], entropy_from_logits(logits)[on], atol=1e-5, rtol=0)
    assert not kept.logprobs[~on].any() and not kept.entropy[~on].any()
    # at the sampling temperature, not at 1
    assert not torch.allclose(kept.logprobs[on], full_at_one[on])

    monkeypatch.setattr(gen, "_has_standard_cache", lambda m: False)
    torch.manual_seed(0)
    s = sample(model, tokenizer, rows, temperature=0.7, max_new_tokens=4, logprobs=True)
    assert s.logprobs is None and s.entropy is None


def test_decode_uses_the_supported_cache_argument(model, tokenizer):
    """The cache goes in under the name transformers 5.24+ supports (`cache=`, not
    the deprecated `past_key_values`): no deprecation warning, on the model alone and
    inside peft's wrapper (PPO's LoRA policy), and the same tokens both ways."""
    import warnings

    from alignloop.models import add_lora

    ids, mask = _ragged_prompts(tokenizer)
    got = []
    for policy in (model, add_lora(build_tiny_causal_lm(tokenizer, seed=0, **TINY), r=2)):
        torch.manual_seed(0)
        with warnings.catch_warnings(record=True) as caught, torch.inference_mode():
            warnings.simplefilter("always")
            got.append(decode(policy, ids, mask, max_new_tokens=6, stop_ids=[EOS], pad_id=PAD,
                              pick=lambda logits: draw(logits, 1.0)).tolist())  # fmt: skip
        assert not [w for w in caught if "past_key_values" in str(w.message)], caught
    assert got[0] == got[1]  # LoRA's B starts at zero: the same model


def test_draw_samples_the_temperature_distribution():
    """200,000 draws from softmax(logits / T) over five tokens, one of probability 0:
    the frequencies match the probabilities and the impossible token never comes."""
    logits = torch.tensor([0.0, 1.0, 2.0, -1.0, float("-inf")])
    probs = torch.softmax(logits / 0.7, -1)
    torch.manual_seed(0)
    tokens = draw(logits.repeat(200_000, 1), temperature=0.7)  # (N, 1)
    freq = torch.bincount(tokens[:, 0], minlength=5).float() / 200_000
    assert freq[4] == 0
    assert torch.allclose(freq, probs, atol=0.004)  # > 4 standard errors for every entry


def test_draw_never_picks_a_zero_probability_token_at_the_top_of_the_cdf(monkeypatch):
    """The uniform number at (or rounded up to) the total lands past the last entry:
    the last token has probability 0 here, so the draw falls back to the argmax."""
    monkeypatch.setattr(torch, "rand", lambda *a, **k: torch.ones(*a, dtype=k.get("dtype")))
    assert draw(torch.tensor([[0.0, 3.0, float("-inf")]]), 1.0).tolist() == [[1]]
