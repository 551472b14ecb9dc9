"""The figures of an evaluation: win rates, lengths and the KL to a reference policy.

- `win_rate`: how often one policy's completion beats another's under a judge (a
  reward model, the demo's gold judge, later human labelers), ties counted half.
- `length_stats`: words (and tokens) per completion: mean, median, 90th percentile.
  RLHF policies lengthen their answers when the reward model likes length
  (Singhal et al. 2023, "A Long Way to Go"), so the report shows it before and after.
- `sequence_kl`: per completion, sum over its tokens of log pi(y_t) - log ref(y_t),
  the k1 estimate of KL(pi || ref) when the completions were sampled from pi: the
  same quantity PPO penalises and logs as `ppo/kl` (alignloop.train.ppo).

How `sequence_kl` rebuilds the tokens that were sampled. PPO scores the sampled token
ids themselves; evaluation has only the decoded text. The prompt is tokenized as
`alignloop.generate.sample` tokenizes it (the tokenizer's special tokens, the start
cut beyond `max_prompt_length`, left padding); the response tokens are the completion
tokenized as the continuation of the prompt (`join_text`, as the SFT trainer does),
followed by EOS when the response ended. For the world's word-level tokenizer and for
byte-level BPE tokenizers (GPT-2, Llama 3, Qwen) decoding then re-encoding gives the
sampled ids back, except when the policy sampled a special token (dropped by
decoding) or a BPE merge the tokenizer would not make; the KL is then that of the
canonical tokenization of the same text. A response that filled `max_new_tokens`
ended without EOS; pass `max_new_tokens` and those get none.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["length_stats", "sequence_kl", "summary_stats", "win_rate"]


def win_rate(
    scores_a: Sequence[float], scores_b: Sequence[float], *, tol: float = 0.0
) -> dict[str, Any]:
    """A's win rate over B on paired scores (higher is better).

    {"wins", "ties", "losses", "n", "rate", "stderr"}: rate = (wins + ties / 2) / n;
    stderr = the standard deviation of the per-pair outcomes (1, 0.5 or 0) over
    sqrt(n), the pairs taken as independent. Scores within `tol` of each other tie.
    rate and stderr are None with no pairs."""
    if len(scores_a) != len(scores_b):
        raise ValueError(f"win_rate: {len(scores_a)} scores of A but {len(scores_b)} of B")
    outcomes = []
    for a, b in zip(scores_a, scores_b, strict=True):
        outcomes.append(0.5 if abs(a - b) <= tol else (1.0 if a > b else 0.0))
    n = len(outcomes)
    wins, ties = outcomes.count(1.0), outcomes.count(0.5)
    rate = (wins + ties / 2) / n if n else None
    stderr = None
    if n:
        var = sum((o - rate) ** 2 for o in outcomes) / (n - 1) if n > 1 else 0.0
        stderr = math.sqrt(var / n)
    return {
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
        "n": n,
        "rate": rate,
        "stderr": stderr,
    }


def summary_stats(values: Sequence[float]) -> dict[str, float | None]:
    """{"mean", "median", "p90"} (numpy's linear-interpolation percentile); None if empty."""
    if not len(values):
        return {"mean": None, "median": None, "p90": None}
    array = np.asarray(values, dtype=float)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "p90": float(np.percentile(array, 90)),
    }


def length_stats(texts: Sequence[str], tokenizer=None) -> dict[str, Any]:
    """{"n", "words": {"mean", "median", "p90"}, "tokens": {...} (with a tokenizer,
    no special tokens counted)}. Words are whitespace-separated."""
    stats: dict[str, Any] = {
        "n": len(texts),
        "words": summary_stats([len(t.split()) for t in texts]),
    }
    if tokenizer is not None:
        rows = tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        stats["tokens"] = summary_stats([len(r) for r in rows])
    return stats


# --- KL to the reference -------------------------------------------------------------


def sequence_kl(
    policy,
    reference,
    tokenizer,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    temperature: float = 1.0,
    batch_size: int = 16,
    max_prompt_length: int | None = None,
    max_new_tokens: int | None = None,
    progress=None,
) -> list[float]:
    """Per completion, sum over its response tokens (EOS included when it ended) of
    log pi(y_t | x, y_<t) - log ref(y_t | x, y_<t), both at softmax(logits / T).

    `prompts[i]` (a text or a conversation, `chat.render_prompt`) is the prompt of
    `completions[i]`; both models must share `tokenizer`. `max_prompt_length` cuts
    prompts as `generate.sample` does (None: the tokenizer's model_max_length); a
    completion of `max_new_tokens` tokens or more is taken to have ended without EOS.
    `progress(n)` is called after each batch."""
    import torch

    from alignloop.chat import completion_ids, render_prompt
    from alignloop.models import (
        ResponseBatch,
        pad_left,
        pad_right,
        response_logprobs,
        tokenize_prompts,
    )

    if len(prompts) != len(completions):
        raise ValueError(f"sequence_kl: {len(prompts)} prompts for {len(completions)} completions")
    if temperature <= 0:
        raise ValueError("sequence_kl: temperature must be positive")
    if not len(completions):
        return []
    if tokenizer.eos_token_id is None:
        raise ValueError("sequence_kl: the tokenizer has no EOS token")
    limit = max_prompt_length or tokenizer.model_max_length
    texts = [render_prompt(tokenizer, p) for p in prompts]  # conversations: the template
    query_rows, _ = tokenize_prompts(tokenizer, texts, limit)  # as generate.sample does
    response_rows = []
    for prompt, completion in zip(prompts, completions, strict=True):
        ids = completion_ids(tokenizer, prompt, completion)
        if max_new_tokens is None or len(ids) < max_new_tokens:
            ids = [*ids, tokenizer.eos_token_id]
        response_rows.append(ids)

    device = next(policy.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Longest first: the first batch shows at once whether memory suffices.
    order = sorted(
        range(len(completions)), key=lambda i: -(len(query_rows[i]) + len(response_rows[i]))
    )
    kl = [0.0] * len(completions)
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        query_ids, query_mask = pad_left([query_rows[i] for i in idx], pad_id)  # (B, Q)
        response_ids, response_mask = pad_right([response_rows[i] for i in idx], pad_id)  # (B, T)
        batch = ResponseBatch(
            query_ids=query_ids.to(device),
            query_mask=query_mask.to(device),
            response_ids=response_ids.to(device),
            response_mask=response_mask.to(device),
        )
        with torch.inference_mode():  # the same pass as PPO's rollout and its reference
            logprobs = response_logprobs(policy, batch, temperature)  # (B, T)
            ref_logprobs = response_logprobs(reference, batch, temperature)  # (B, T)
        per_token = (logprobs - ref_logprobs) * batch.response_mask  # (B, T)
        for i, value in zip(idx, per_token.sum(1).tolist(), strict=True):
            kl[i] = value
        if progress is not None:
            progress(len(idx))
    return kl


def mean_or_none(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if len(values) else None
