"""Win rates and lengths by hand; the KL to the reference against an unbatched
computation and against PPO's own forward pass on the same tokens."""

from __future__ import annotations

import math

import pytest
import torch

from alignloop.evaluate.metrics import (
    length_stats,
    sequence_kl,
    win_rate,
)
from alignloop.models import continuation_ids, load_policy
from alignloop.world import make_prompts


def test_win_rate_by_hand():
    wr = win_rate([1, 2, 3, 4, 5], [0, 2, 4, 4, 1])
    # outcomes: win, tie, loss, tie, win -> (2 + 2/2) / 5
    assert (wr["wins"], wr["ties"], wr["losses"], wr["n"]) == (2, 2, 1, 5)
    assert wr["rate"] == pytest.approx(0.6)
    # outcomes 1, .5, 0, .5, 1: sample variance .70 / 4, stderr sqrt(.175 / 5)
    assert wr["stderr"] == pytest.approx(math.sqrt(0.175 / 5))


def test_win_rate_tolerance_empty_and_mismatch():
    assert win_rate([1.0, 2.0], [1.05, 1.0], tol=0.1)["ties"] == 1
    empty = win_rate([], [])
    assert empty["n"] == 0 and empty["rate"] is None and empty["stderr"] is None
    assert win_rate([3.0], [1.0]) == {
        "wins": 1,
        "ties": 0,
        "losses": 0,
        "n": 1,
        "rate": 1.0,
        "stderr": 0.0,
    }
    with pytest.raises(ValueError, match="2 scores of A but 1 of B"):
        win_rate([1, 2], [1])


def test_length_stats_by_hand():
    from alignloop.world import build_tokenizer

    texts = ["the cat sat", "a", "", "the a of in on it"]  # 3, 1, 0, 6 words
    stats = length_stats(texts, build_tokenizer())
    assert stats["n"] == 4
    # sorted 0 1 3 6: median (1 + 3) / 2; p90 at index 2.7: 3 + 0.7 * (6 - 3)
    assert stats["words"] == pytest.approx({"mean": 2.5, "median": 2.0, "p90": 5.1})
    assert stats["tokens"] == stats["words"]  # one token per word in the world
    assert "tokens" not in length_stats(texts)
    assert length_stats([])["words"]["mean"] is None


def _hand_kl(policy, reference, tokenizer, prompt, completion, temperature, eos=True) -> float:
    """One sequence, no padding, full log-softmax: the definition, written plainly."""
    q = tokenizer(prompt)["input_ids"]
    r = tokenizer(completion, add_special_tokens=False)["input_ids"]
    r = r + [tokenizer.eos_token_id] if eos else r
    ids = torch.tensor([q + r])
    with torch.no_grad():
        lp = torch.log_softmax(policy(ids).logits[0] / temperature, -1)
        lr = torch.log_softmax(reference(ids).logits[0] / temperature, -1)
    return sum(
        (lp[len(q) + t - 1, tok] - lr[len(q) + t - 1, tok]).item() for t, tok in enumerate(r)
    )


@pytest.fixture(scope="module")
def models(tiny):
    policy, tokenizer = load_policy(tiny["policy"])
    reference, _ = load_policy(tiny["reference"])
    return policy, reference, tokenizer


def test_sequence_kl_is_zero_against_itself(models):
    policy, _, tokenizer = models
    prompts = [p.prompt for p in make_prompts(4, seed=3)]
    completions = ["the bank funded a station", "", "the tower creates 75 buses", "a"]
    kl = sequence_kl(policy, policy, tokenizer, prompts, completions, temperature=0.7)
    assert kl == [0.0, 0.0, 0.0, 0.0]


def test_sequence_kl_equals_the_unbatched_definition(models):
    policy, reference, tokenizer = models
    prompts = [p.prompt for p in make_prompts(3, seed=4)]  # different lengths: padding
    completions = ["the bank funded a new station ; it needs 75 seats", "", "the tower"]
    got = sequence_kl(
        policy, reference, tokenizer, prompts, completions, temperature=0.7, batch_size=2
    )
    want = [
        _hand_kl(policy, reference, tokenizer, p, c, 0.7)
        for p, c in zip(prompts, completions, strict=True)
    ]
    assert got == pytest.approx(want, abs=1e-5)
    assert all(abs(w) > 1e-3 for w in want)  # two different models: not trivially 0
    # A completion of max_new_tokens tokens was cut, so it gets no EOS.
    cut = sequence_kl(policy, reference, tokenizer, prompts[:1], ["the tower"], max_new_tokens=2)
    assert cut[0] == pytest.approx(
        _hand_kl(policy, reference, tokenizer, prompts[0], "the tower", 1.0, eos=False), abs=1e-5
    )


def test_sequence_kl_matches_ppo_on_sampled_tokens(models):
    """The KL PPO computes from the sampled ids equals the KL evaluation computes from
    the decoded texts (the world tokenizer round-trips)."""
    from alignloop.generate import sample
    from alignloop.losses import kl_k1, logprobs_from_logits
    from alignloop.models import ResponseBatch
    from alignloop.train.ppo import forward

    policy, reference, tokenizer = models
    prompts = [p.prompt for p in make_prompts(6, seed=5)]
    torch.manual_seed(0)
    s = sample(policy, tokenizer, prompts, k=2, temperature=0.7, max_new_tokens=6)
    mask = s.response_mask.float()
    with torch.no_grad():
        batch = ResponseBatch(s.query_ids, s.query_mask, s.response_ids, mask)
        lp, lr = (
            logprobs_from_logits(forward(m, None, batch, 0.7, values=False)[0], s.response_ids)
            for m in (policy, reference)
        )
    ppo_kl = (kl_k1(lp, lr) * mask).sum(1).tolist()  # (N,) as ppo/kl sums them
    # Rows that sampled a special token before the end do not survive decoding.
    special = set(tokenizer.all_special_ids) - {tokenizer.eos_token_id}
    keep = [
        i
        for i in range(len(ppo_kl))
        if not special & set(s.response_ids[i][s.response_mask[i].bool()].tolist())
    ]
    assert len(keep) >= 6
    texts = [prompts[int(s.prompt_index[i])] for i in keep]
    ours = sequence_kl(
        policy,
        reference,
        tokenizer,
        texts,
        [s.completions[i] for i in keep],
        temperature=0.7,
        max_new_tokens=6,
        batch_size=4,
    )
    assert ours == pytest.approx([ppo_kl[i] for i in keep], abs=1e-5)


def test_completion_tokens_continue_the_prompt(models):
    _, _, tokenizer = models
    ids = continuation_ids(tokenizer, "in riverton , the bank . tl;dr :", "the bank")
    assert ids == tokenizer("the bank", add_special_tokens=False)["input_ids"]
    assert continuation_ids(tokenizer, "a", "") == []


def test_sequence_kl_checks_its_inputs(models):
    policy, _, tokenizer = models
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        sequence_kl(policy, policy, tokenizer, ["a", "b"], ["c"])
    assert sequence_kl(policy, policy, tokenizer, [], []) == []
