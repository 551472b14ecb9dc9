"""Sampling completions from a causal LM: K samples per prompt, batched, KV-cached.

Used by PPO's rollouts and by `alignloop generate`. Models with a standard KV cache
are sampled by this module's own loop (`decode`, `draw`); others by transformers'
`generate` with the same pure-sampling settings. The details that decide whether RL
on the samples is sound:

- prompts are left-padded (generation appends on the right) and positions are
  counted over real tokens, so a padded prompt is continued exactly as an unpadded
  one would be (transformers derives them from the attention mask; the trainer's
  forward pass uses `position_ids_from_mask`, the same numbers);
- the sampling distribution is softmax(logits / T) and nothing else: top_k=0,
  top_p=1, and the model's own generation config (which may carry top_k=20 or a
  repetition penalty from the hub) is set aside, so the log-probabilities PPO
  computes are those of the tokens' true sampling distribution (Huang et al. 2024,
  "The N+ Implementation Details of RLHF with PPO");
- a response ends at its first EOS, which it keeps; whatever follows is padding,
  masked out (`truncate_after_eos`);
- asked to (`sample(logprobs=True)`), the KV-cached loop keeps each sampled token's
  log-probability and each step's entropy at softmax(logits / T), computed as PPO's
  forward pass computes them from the logits (`record`): PPO's rollout can take them
  for its old log-probabilities instead of a second policy pass (issue 17;
  `train.ppo.recompute_reason` says where it does not).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase

from alignloop.chat import render_prompt, require_template
from alignloop.models import pad_left, tokenize_prompts
from alignloop.schema import Completion, Prompt

__all__ = [
    "Samples",
    "decode",
    "draw",
    "generate_completions",
    "generate_file",
    "record",
    "sample",
    "sampling_config",
    "stop_token_ids",
    "truncate_after_eos",
]


@dataclass
class Samples:
    """N = prompts * k sampled responses; the k rows of one prompt are adjacent."""

    query_ids: torch.Tensor  # (N, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (N, Q) 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, R) sampled tokens up to the first EOS, then pad
    response_mask: torch.Tensor  # (N, R) 1 on response tokens, the first EOS included
    has_eos: torch.Tensor  # (N,) bool: the response ended with EOS within max_new_tokens
    prompt_index: torch.Tensor  # (N,) index of the prompt each row continues
    completions: list[str]  # N decoded responses, EOS and special tokens dropped
    # With sample(logprobs=True) on the KV-cached loop, else None; 0 after the response:
    logprobs: torch.Tensor | None = None  # (N, R) float32 log pi(token) at logits / T
    entropy: torch.Tensor | None = None  # (N, R) float32 entropy of softmax(logits / T)


def stop_token_ids(model, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's EOS and every EOS id of the model's generation config (Llama 3
    and chat models have several)."""
    ids = set() if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None)
    if eos is not None:
        ids.update([eos] if isinstance(eos, int) else eos)
    if not ids:
        raise ValueError("the policy has no EOS token: its responses could never end")
    return sorted(ids)


def truncate_after_eos(
    response_ids: torch.Tensor, stop_ids: Sequence[int], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Cut each response after its first stop token (kept) and pad the rest.

    response_ids: (N, R). Returns (response_ids (N, R), response_mask (N, R) long,
    has_eos (N,) bool); a row without a stop token keeps all R tokens."""
    R = response_ids.shape[1]
    is_stop = torch.isin(response_ids, torch.as_tensor(stop_ids, device=response_ids.device))
    has_eos = is_stop.any(dim=1)  # (N,)
    first = torch.where(has_eos, is_stop.long().argmax(dim=1), R - 1)  # (N,) last kept index
    positions = torch.arange(R, device=response_ids.device)  # (R,)
    mask = (positions[None, :] <= first[:, None]).long()  # (N, R)
    return response_ids.masked_fill(mask == 0, pad_id), mask, has_eos


def sampling_config(
    *, temperature: float, max_new_tokens: int, pad_id: int, stop_ids: Sequence[int]
) -> GenerationConfig:
    """Pure sampling at `temperature` for transformers' `generate` (the path for
    models without a standard KV cache): every other logits processor off."""
    return GenerationConfig(
        do_sample=True,
        temperature=temperature,
        top_k=0,
        top_p=1.0,
        typical_p=1.0,
        epsilon_cutoff=0.0,
        eta_cutoff=0.0,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        min_new_tokens=0,
        num_beams=1,
        max_new_tokens=max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=list(stop_ids),
        use_cache=True,
    )


def _hf_model(model):
    """The transformers model inside a peft wrapper (or the model itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def draw(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """One token per row from softmax(logits / T): (N, V) -> (N, 1).

    By inverse CDF: one uniform number per row located in the cumulative
    distribution (summed in float64, so each token's interval has its probability's
    width to ~1e-16). torch.multinomial draws a random number per vocabulary entry:
    for 16 rows of an 8k vocabulary on 2 CPU threads it took 4.8 ms a step against
    0.6 ms (`benchmarks/sampling.py`)."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (N, V)
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)  # (N, V)
    u = torch.rand(len(cdf), 1, dtype=torch.float64, device=cdf.device) * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).clamp_(max=cdf.shape[1] - 1)  # (N, 1)
    # u can round up to the total, landing on a last entry of probability 0: argmax then.
    zero = probs.gather(1, token) == 0
    return torch.where(zero, probs.argmax(dim=-1, keepdim=True), token)


def record(
    pick: Callable[[torch.Tensor], torch.Tensor], temperature: float
) -> tuple[Callable[[torch.Tensor], torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """`pick` that also keeps, at each step, the picked token's log-probability and the
    entropy at softmax(logits / T), each (N,) float32: (pick, logprobs, entropies).

    The same functions on the same float32 logits / T as PPO's forward pass
    (`models.response_logits`, `losses.logprobs_from_logits`, `entropy_from_logits`),
    so the two differ only by what the cache changes in the logits themselves."""
    from alignloop.losses import entropy_from_logits, logprobs_from_logits

    logprobs: list[torch.Tensor] = []
    entropies: list[torch.Tensor] = []

    def recording(logits: torch.Tensor) -> torch.Tensor:
        token = pick(logits)  # (N, 1)
        scaled = logits.float()[:, None] / temperature  # (N, 1, V)
        logprobs.append(logprobs_from_logits(scaled, token)[:, 0])  # (N,)
        entropies.append(entropy_from_logits(scaled)[:, 0])  # (N,)
        return token

    return recording, logprobs, entropies


def decode(
    policy,
    query_ids: torch.Tensor,
    query_mask: torch.Tensor,
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int],
    pad_id: int,
    pick,
) -> torch.Tensor:
    """The KV-cached sampling loop: left-padded prompts (N, Q) -> new tokens (N, R),
    R <= max_new_tokens, stopping when every row has produced a stop token (rows that
    stopped get `pad_id`). `pick(logits (N, V)) -> (N, 1)` chooses each next token.

    A static cache sized Q + max_new_tokens is written in place, where transformers'
    `generate` grows a dynamic one by concatenation at every step. With `draw`,
    `sample` took 334 ms for 16 prompts x 32 tokens of the benchmark's tiny Llama
    where `generate` took 487 ms (`benchmarks/sampling.py`, 2 CPU threads).

    The cache goes in as `cache=`, the name transformers 5.24 gave the argument
    (`past_key_values` warns there and goes in 5.40); hence transformers>=5.24."""
    from transformers import StaticCache

    from alignloop.models import position_ids_from_mask

    N, Q = query_ids.shape
    cache = StaticCache(config=_hf_model(policy).config, max_cache_len=Q + max_new_tokens)
    # The mask covers the whole cache: a column opens when its token is fed.
    mask = torch.cat([query_mask, query_mask.new_zeros(N, max_new_tokens)], dim=1)
    position = position_ids_from_mask(query_mask)  # (N, Q)
    stops = torch.as_tensor(list(stop_ids), device=query_ids.device)
    out = query_ids.new_full((N, max_new_tokens), pad_id)
    done = torch.zeros(N, dtype=torch.bool, device=query_ids.device)
    logits = policy(
        input_ids=query_ids, attention_mask=mask, position_ids=position,
        cache=cache, use_cache=True, logits_to_keep=1,
    ).logits[:, -1]  # fmt: skip
    position = position[:, -1:]  # (N, 1)
    for t in range(max_new_tokens):
        token = pick(logits).masked_fill_(done[:, None], pad_id)  # (N, 1)
        out[:, t] = token[:, 0]
        done |= torch.isin(token[:, 0], stops)
        if t == max_new_tokens - 1 or bool(done.all()):
            return out[:, : t + 1]
        mask[:, Q + t] = 1
        position = position + 1
        logits = policy(
            input_ids=token, attention_mask=mask, position_ids=position,
            cache=cache, use_cache=True,
        ).logits[:, -1]  # fmt: skip
    return out


def _has_standard_cache(model) -> bool:
    """Whether `decode`'s static KV cache fits the model (not for the recurrent and
    exotic architectures transformers itself keeps on their own caches)."""
    hf = _hf_model(model)
    supports = getattr(hf, "_supports_default_dynamic_cache", None)
    return bool(supports and supports()) and not getattr(hf, "_is_stateful", False)


@torch.inference_mode()
def sample(
    policy,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]] | Sequence[str],
    *,
    k: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    max_prompt_length: int | None = None,
    stop_ids: Sequence[int] | None = None,
    logprobs: bool = False,
) -> Samples:
    """`k` sampled responses to each prompt (token ids, or texts tokenized here).

    Texts longer than `max_prompt_length` tokens lose their start, with a warning.
    `logprobs`: keep each token's log-probability and entropy as sampled
    (`Samples.logprobs`, `.entropy`), on the KV-cached loop only (None on
    transformers' `generate`); the tokens drawn are the same either way."""
    if not len(prompts):
        raise ValueError("no prompts to sample from")
    if isinstance(prompts[0], str):
        limit = max_prompt_length or tokenizer.model_max_length
        rows, cut = tokenize_prompts(tokenizer, prompts, limit)  # type: ignore[arg-type]
        if cut:
            warnings.warn(
                f"{cut} prompts longer than {limit} tokens lost their start", stacklevel=2
            )
    else:
        rows = [list(r) for r in prompts]  # type: ignore[arg-type]
    if any(not r for r in rows):
        raise ValueError("a prompt has no tokens")
    pad_id = tokenizer.pad_token_id
    stop_ids = list(stop_ids) if stop_ids is not None else stop_token_ids(policy, tokenizer)
    device = next(policy.parameters()).device
    query_ids, query_mask = pad_left(rows, pad_id)  # (P, Q)
    prompt_index = torch.arange(len(rows)).repeat_interleave(k)  # (N,)
    query_ids, query_mask = query_ids[prompt_index].to(device), query_mask[prompt_index].to(device)

    kept = None  # (log-probabilities, entropies) of the steps, with `logprobs`
    if _has_standard_cache(policy):
        pick = lambda logits: draw(logits, temperature)  # noqa: E731
        if logprobs:
            pick, *kept = record(pick, temperature)
        new_tokens = decode(
            policy, query_ids, query_mask, max_new_tokens=max_new_tokens, stop_ids=stop_ids,
            pad_id=pad_id, pick=pick,
        )  # fmt: skip
    else:
        config = sampling_config(
            temperature=temperature, max_new_tokens=max_new_tokens, pad_id=pad_id,
            stop_ids=stop_ids,
        )  # fmt: skip
        hf = _hf_model(policy)
        # The model's own generation config fills every field ours leaves unset (its
        # top_k, min_p, bad words...): a bare one is swapped in for the call.
        saved, hf.generation_config = hf.generation_config, GenerationConfig()
        try:
            out = policy.generate(
                input_ids=query_ids, attention_mask=query_mask, generation_config=config
            )  # (N, Q + R)
        finally:
            hf.generation_config = saved
        new_tokens = out[:, query_ids.shape[1] :]
    response_ids, response_mask, has_eos = truncate_after_eos(new_tokens, stop_ids, pad_id)
    token_logprobs = token_entropy = None
    if kept is not None:  # 0 where a row had stopped: the steps after drew tokens it drops
        token_logprobs, token_entropy = (torch.stack(steps, 1) * response_mask for steps in kept)
    return Samples(
        query_ids=query_ids,
        query_mask=query_mask,
        response_ids=response_ids,
        response_mask=response_mask,
        has_eos=has_eos,
        prompt_index=prompt_index.to(device),
        completions=decode_responses(tokenizer, response_ids, response_mask, has_eos),
        logprobs=token_logprobs,  # (N, R)
        entropy=token_entropy,  # (N, R)
    )


def decode_responses(
    tokenizer: PreTrainedTokenizerBase,
    response_ids: torch.Tensor,
    response_mask: torch.Tensor,
    has_eos: torch.Tensor,
) -> list[str]:
    """The text of each response: its tokens before the EOS, special tokens dropped."""
    lengths = (response_mask.sum(1) - has_eos.long()).tolist()  # (N,) without the EOS
    rows = [ids[:n] for ids, n in zip(response_ids.tolist(), lengths, strict=True)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def generate_completions(
    policy,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Prompt],
    *,
    k: int = 1,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    max_prompt_length: int | None = None,
    batch_size: int = 16,
    policy_name: str | None = None,
    progress: Callable[[int], None] | None = None,
    adapter: str | None = None,
    prefix: str | None = None,
) -> list[Completion]:
    """`k` completion records per prompt (ids "<prompt id>-<j>"), `batch_size`
    prompts per `sample` call; a conversation is rendered with the chat template and
    its completion is the assistant's turn (`chat.render_prompt`). `progress(n)` is
    called after each batch with its number of prompts (as `sequence_kl` does), to
    drive a progress bar. `adapter`: which of a peft policy's adapters samples (a name
    given to `adapters.load_adapters`, or `adapters.ADAPTER_OFF`: the base); None: the
    policy as it is. `prefix`: a user's prefix for a conditioned policy (train-ppo
    --users; `personal.conditioning.prefix_for`), put before each prompt (a
    conversation: at the start of its first user turn) as the policy read it there."""
    from alignloop.adapters import adapter_active

    with adapter_active(policy, adapter):
        return _generate_completions(
            policy, tokenizer, prompts, k=k, temperature=temperature,
            max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length,
            batch_size=batch_size, policy_name=policy_name, progress=progress, prefix=prefix,
        )  # fmt: skip


def _generate_completions(
    policy, tokenizer, prompts, *, k, temperature, max_new_tokens, max_prompt_length,
    batch_size, policy_name, progress, prefix,
) -> list[Completion]:  # fmt: skip
    from alignloop.personal.conditioning import with_user_prefix

    records: list[Completion] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        read = [p.prompt if prefix is None else with_user_prefix(p.prompt, prefix) for p in chunk]
        samples = sample(
            policy,
            tokenizer,
            [render_prompt(tokenizer, p) for p in read],
            k=k,
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            max_prompt_length=max_prompt_length,
        )
        for row, text in enumerate(samples.completions):
            prompt = chunk[int(samples.prompt_index[row])]
            records.append(
                Completion(
                    id=f"{prompt.id}-{row % k}",
                    prompt_id=prompt.id,
                    completion=text,
                    policy=policy_name,
                )
            )
        if progress is not None:
            progress(len(chunk))
    return records


def generate_file(
    policy_path: str | Path,
    prompts_path: str | Path,
    out: str | Path,
    *,
    k: int = 4,
    temperature: float = 1.0,
    max_new_tokens: int = 64,
    max_prompt_length: int | None = None,
    batch_size: int = 16,
    seed: int = 0,
    policy_name: str | None = None,
    show_progress: bool = True,
    options=None,
    adapter: str | Path | None = None,
    user: str | None = None,
    user_prefix: str | None = None,
) -> int:
    """`alignloop generate`: sample `k` completions of every prompt of a file with a
    policy (local path or hub id) and write them as completion records (atomically).
    Seeded: the same seed, policy and prompts give the same file. Returns the count.
    `options`: how the policy is loaded (`models.LoadOptions` or a config with them).
    `adapter`: a saved LoRA adapter folder put on the policy, its base (a personalized
    policy: train-ppo --lora-r R --save-adapter); the records' `policy` is then
    "BASE+ADAPTER" unless `policy_name` is given. `user`: sample for one user of a
    conditioned policy (train-ppo --users), each prompt read after the user's prefix:
    `user_prefix`'s template, or the one saved with the policy (`prefix_for`); the
    records' `policy` then ends in "@USER"."""
    from alignloop.io import read_prompts, write_records
    from alignloop.models import load_policy
    from alignloop.personal.conditioning import prefix_for
    from alignloop.progress import progress
    from alignloop.schema import SchemaError

    prefix = None
    if user is not None:  # checked before any model loads
        prefix = prefix_for(user, adapter, policy_path, template=user_prefix)
    prompts = read_prompts(prompts_path)
    if not prompts:
        raise SchemaError(f"{prompts_path}: no prompts to generate from")
    policy, tokenizer = load_policy(policy_path, options=options, what="--policy", adapter=adapter)
    default_name = str(policy_path) if adapter is None else f"{policy_path}+{adapter}"
    default_name += "" if user is None else f"@{user}"
    require_template(tokenizer, prompts, str(policy_path))
    policy.eval()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    policy.to(device)
    torch.manual_seed(seed)
    bar, task = progress(len(prompts), f"generating {k} per prompt", enabled=show_progress)
    with bar, torch.inference_mode():
        records = generate_completions(
            policy, tokenizer, prompts, k=k, temperature=temperature,
            max_new_tokens=max_new_tokens, max_prompt_length=max_prompt_length,
            batch_size=batch_size, policy_name=policy_name or default_name,
            progress=lambda n: bar.update(task, advance=n), prefix=prefix,
        )  # fmt: skip
    return write_records(out, records)
