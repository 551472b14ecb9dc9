"""PPO on a language model against a reward model and/or a Python reward function.

One step, top to bottom (Ouyang et al. 2022; Stiennon et al. 2020; the details from
Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO"):

    samples = sample(policy, prompts, k)            # T-scaled sampling, cut at EOS
    logprobs = samples.logprobs, or forward(policy) # (B, T), logits / T, as sampled
    values = forward(critic)                        # (B, T) V(s_t)
    ref_logprobs = forward(reference)               # frozen copy, or LoRA adapter off
    scores = reward model + reward fn (B,)          # texts decoded, re-encoded for the RM
    rewards = -beta * KL_t, + score at the last token  # compute_rewards
    advantages, returns = gae(rewards, values)      # gamma 1, lambda 0.95, whitened
    ppo_update: epochs x shuffled minibatches of clipped policy + value losses

The old log-probabilities are the sampler's own (it keeps them as it samples, at
logits / T) where they were measured equal to a policy pass over the rollout within
1e-6, and the pass is left out; elsewhere a pass after sampling computes them
(--recompute-logprobs; `recompute_reason` says where and why: issue 17).

Where the score sits is a choice: here at the last response token (the EOS, or the
last token of a response cut at --max-new-tokens), the action that earns it; TRL and
Huang et al.'s final code put it one step later, at the first position after the EOS
(a padding slot whose value the critic also learns). With gamma = 1 every token's
return is the same either way; GAE's lambda-weighting and the critic's extra slot
differ. A response that never ended
gets --missing-eos-score in place of its score (or, TRL's way, --missing-eos-penalty
subtracted from it: `finish_scores`).

A reward model of several heads (criteria, or a personal model's features; issue 16)
gives one score as a weighted sum of its normalized heads (--reward NAME=W, --user,
--user-weights), optionally behind a safety gate (--safety-head: where that head is
below --safety-threshold, it alone counts): `HeadCombination`. Each head's mean is
logged as ppo/score_<head>, the gated share as ppo/safety_gated.

One policy for several users of a personal reward model (--users a,b: issue 16, the
conditioned alternative to an adapter per user): each prompt of a rollout goes to one
user in turn (`personal.conditioning.assign_users`: seeded, balanced), the policy reads
it after that user's --user-prefix, the reward model as the user wrote it (no prefix),
and the score is that user's combination of the heads (`HeadCombination.rows`, weights
per sample), logged per user as ppo/score_user_<name>. The saved policy remembers the
prefix and the users (alignloop_conditioning.json) for `generate --user NAME`.

With `advantage="rloo"` there is no critic: K responses per prompt, each one's
advantage is its return (score - beta * KL) minus the mean return of the others
(REINFORCE leave-one-out, Ahmadian et al. 2024), and the update has no value loss.

The loop around it (`train_ppo`), a function per step:

    run = set_up_run(config)            # models, optimizers, schedule; --resume
    collect_rollout(run)                # the next prompts -> make_rollout, stats
    kl_budget_spent(stats)              # stop rule, before the update
    update_policy(run, rollout)         # ppo_update, LR schedulers, KL controller
    advance(run); log_step(run)         # the state a checkpoint keeps; the logs
    run.save(step)                      # every --save-every steps
    reward_target_met(history)          # stop rule (max steps/episodes: `_schedule`)
    finish_run(run)                     # the policy and final_metrics.json

Checkpoints resume bit-exactly on CPU; multi-process runs go through accelerate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from alignloop.chat import render_prompt, require_template
from alignloop.config import ConfigError
from alignloop.losses import (
    combine_heads,
    combine_heads_per_sample,
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    masked_var,
    masked_whiten,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    safety_gate,
)
from alignloop.personal.conditioning import (
    assign_users,
    save_conditioning,
    user_prefix,
    with_user_prefix,
)
from alignloop.progress import progress
from alignloop.schema import SchemaError
from alignloop.train.common import (
    Checkpoints,
    MetricsLog,
    TrainingError,
    epoch_batches,
    stop_unless_finite,
)
from alignloop.train.ppo_config import PPOConfig

if TYPE_CHECKING:
    from alignloop.models import ResponseBatch

__all__ = [
    "AdaptiveKL",
    "FixedKL",
    "HeadCombination",
    "PPOConfig",
    "Reference",
    "Rollout",
    "compute_rewards",
    "load_reward_fn",
    "main",
    "make_rollout",
    "ppo_update",
    "recompute_reason",
    "reward_combination",
    "train_ppo",
]

RewardFn = Callable[[list[str], list[str]], Sequence[float]]
TIME_KEYS = ("ppo/episodes_per_sec", "ppo/seconds")  # differ between identical runs
# The parts of a score function's answer that add up to the score; its other keys are
# per-episode figures whose means are logged (score_<head>, safety_gated).
SCORE_PARTS = ("reward_model", "reward_fn")
USER_FIGURE = "score_user_"  # score_user_<name>: NaN on the other users' episodes


# --- rollouts --------------------------------------------------------------------------


@dataclass
class Rollout:
    """One batch of episodes with everything PPO needs. B episodes, Q prompt tokens,
    T response tokens; responses right-padded after their first EOS."""

    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) response tokens, pad after the first EOS
    response_mask: torch.Tensor  # (B, T) 1.0 on response tokens, the EOS included
    logprobs: torch.Tensor  # (B, T) log pi_old(a_t | s_t) of the sampling policy, logits / T
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(a_t | s_t), logits / T
    values: torch.Tensor  # (B, T) V_old(s_t) of the critic before this update
    entropy: torch.Tensor  # (B, T) entropy of pi_old at each position (a diagnostic)
    scores: torch.Tensor  # (B,) score per response: reward model + reward fn, penalties
    kl: torch.Tensor  # (B, T) per-token KL estimate to the reference, 0 on padding
    rewards: torch.Tensor  # (B, T) -beta * kl_t, plus the score at the last token
    advantages: torch.Tensor  # (B, T) GAE advantages (whitened when configured)
    returns: torch.Tensor  # (B, T) GAE advantages + values: the critic's target
    has_eos: torch.Tensor  # (B,) bool: the response ended with EOS
    prompts: list[str]  # B prompt texts, as the policy read them (a user's prefix too)
    completions: list[str]  # B decoded responses
    users: list[str] | None = None  # B users of --users, whose episode each is; None without
    # (B,) each: a combined reward's figures per episode (score_<head>, safety_gated; see
    # make_score_fn), written to rollouts.jsonl; None for a single reward
    score_figures: dict[str, torch.Tensor] | None = None
    pack: bool = False  # the passes over it run on packed rows (--pack-rows)
    # (2,) float64: padded and all positions of the rollout's policy, reference and
    # value passes as they ran (padded or packed rows); not per episode
    pass_padding: torch.Tensor | None = None

    @functools.cached_property
    def tokens(self) -> ResponseBatch:
        """The prompt and response tokens, for a forward pass over them (made once, so
        packed rows are laid out once however often the update reads them)."""
        from alignloop.models import ResponseBatch

        return ResponseBatch(self.query_ids, self.query_mask, self.response_ids,
                             self.response_mask, pack=self.pack)  # fmt: skip

    def select(self, idx: torch.Tensor) -> Rollout:
        """The episodes `idx`, trimmed to their own longest prompt and response (no
        compute spent on columns that are padding in every row)."""
        T = int(self.response_mask[idx].sum(1).max())
        q0 = int((self.query_mask[idx].sum(0) > 0).long().argmax())  # first real column
        picked = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v is None or isinstance(v, bool) or f.name == "pass_padding":
                picked[f.name] = v if f.name != "pass_padding" else None
            elif isinstance(v, dict):
                picked[f.name] = {k: t[idx] for k, t in v.items()}
            elif isinstance(v, list):
                picked[f.name] = [v[i] for i in idx.tolist()]
            elif v.dim() == 2:
                picked[f.name] = v[idx, q0:] if f.name.startswith("query") else v[idx, :T]
            else:
                picked[f.name] = v[idx]
        return Rollout(**picked)


class Reference:
    """Log-probabilities under the frozen reference policy: a separate frozen copy,
    or, with LoRA, the policy itself with its adapter switched off (no second copy
    of the weights in memory)."""

    def __init__(self, model, *, adapter_off: bool):
        self.model = model
        self.adapter_off = adapter_off

    def logprobs(self, batch: ResponseBatch, temperature: float) -> torch.Tensor:
        """log pi_ref(a_t | s_t) of each response token, logits / T: (B, T)."""
        from alignloop.models import response_logprobs

        off = self.model.disable_adapter() if self.adapter_off else contextlib.nullcontext()
        with off:
            return response_logprobs(self.model, batch, temperature)  # (B, T)


def forward(policy, critic, batch: ResponseBatch, temperature: float, *, values: bool = True):
    """(logits (B, T, V) / temperature predicting each response token, values (B, T)
    of the state before it, or None). `critic` None with `values`: the policy
    carries a value head (`PolicyWithValueHead`)."""
    from alignloop.models import response_logits

    logits, v = response_logits(policy, batch, temperature, value_head=values and critic is None)
    if values and critic is not None:
        v = critic_values(critic, batch)  # (B, T)
    return logits, v


def critic_values(critic, batch: ResponseBatch) -> torch.Tensor:
    """A separate critic's V(s_t) of each response token's state, before a_t: (B, T)."""
    if batch.pack:
        p = batch.packed
        v = critic(p.input_ids, p.attention_mask, p.position_ids)  # (R, L)
        return v.flatten()[p.read_at].float()  # (B, T)
    inputs = batch.model_inputs()
    v = critic(inputs["input_ids"], inputs["attention_mask"])  # (B, Q + T)
    return v[:, batch.query_ids.shape[1] - 1 : -1].float()  # (B, T)


def compute_rewards(
    scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float
) -> torch.Tensor:
    """Per-token rewards (B, T): -beta * KL_t at every response token, plus the
    episode's score (B,) at its last token (Ziegler et al. 2019, eq. 2)."""
    from alignloop.models import last_token_index

    rewards = -kl_coef * kl * mask  # (B, T)
    last = last_token_index(mask)  # (B,) the EOS, or the last token without one
    rewards[torch.arange(len(scores)), last] += scores
    return rewards


def kl_estimate(logprobs, ref_logprobs, mask, estimator: str) -> torch.Tensor:
    """Per-token KL to the reference (B, T), 0 on padding."""
    kl = kl_k3(logprobs, ref_logprobs) if estimator == "k3" else kl_k1(logprobs, ref_logprobs)
    return kl * mask


def finish_scores(raw: torch.Tensor, has_eos: torch.Tensor, config: PPOConfig) -> torch.Tensor:
    """The score of a response that never ended (the TL;DR reproductions' "EOS
    trick"), then optional clipping: raw (B,), has_eos (B,) bool -> (B,).

    Two conventions, each under its own name: --missing-eos-score replaces the score
    (Huang et al.'s reference code: -1), --missing-eos-penalty subtracts a positive
    value from it (TRL's `missing_eos_penalty`); given the penalty, the replacement
    is off."""
    scores = raw
    if config.missing_eos_penalty is not None:
        scores = torch.where(has_eos, scores, scores - config.missing_eos_penalty)
    elif config.missing_eos_score is not None:
        scores = torch.where(has_eos, scores, torch.full_like(scores, config.missing_eos_score))
    if config.reward_clip is not None:
        scores = scores.clamp(-config.reward_clip, config.reward_clip)
    return scores


def make_rollout(
    policy,
    critic,
    reference: Reference,
    tokenizer,
    prompt_rows,
    prompt_texts,
    score_fn,
    kl_coef: float,
    config: PPOConfig,
    autocast=contextlib.nullcontext,
    users: Sequence[str] | None = None,
    sampler_logprobs: bool = False,
) -> tuple[Rollout, dict[str, torch.Tensor]]:
    """Sample, score and evaluate one batch; returns the rollout and the score
    function's answer: the raw parts {"reward_model": (B,), "reward_fn": (B,)} (checked
    for NaN by the caller), with a reward model of several heads also each head's
    scores "score_<head>" (B,) and, behind a safety gate, "safety_gated" (B,) 0/1.

    `users` (--users): each prompt's user; `prompt_rows` are then the prompts as the
    policy reads them, after their user's prefix (`conditioned_prompt`), `prompt_texts`
    as the reward model reads them, without it, and `score_fn` is given each
    episode's user (`users=`).

    `sampler_logprobs`: the old log-probabilities and entropies are the sampler's,
    kept as it sampled, and the policy's pass after sampling is left out (where
    `recompute_reason` finds none); else that pass computes them."""
    from alignloop.generate import sample
    from alignloop.models import ResponseBatch

    generator = policy.policy if _value_head(config) else policy  # the causal LM itself
    for m in (policy, critic):
        if m is not None:
            m.eval()  # for generate's KV cache, which gradient checkpointing turns off
    s = sample(
        generator,
        tokenizer,
        prompt_rows,
        k=config.samples_per_prompt,
        temperature=config.temperature,
        max_new_tokens=config.max_new_tokens,
        logprobs=sampler_logprobs,
    )
    T = int(s.response_mask.sum(1).max())
    tokens = ResponseBatch(
        query_ids=s.query_ids,
        query_mask=s.query_mask,
        response_ids=s.response_ids[:, :T],
        response_mask=s.response_mask[:, :T].float(),
        pack=config.pack_rows,
    )
    mask = tokens.response_mask  # (B, T)
    sampled = None
    if sampler_logprobs:
        if s.logprobs is None:
            raise ValueError("the sampler kept no log-probabilities (transformers' generate)")
        sampled = (s.logprobs[:, :T], s.entropy[:, :T])  # (B, T) each, 0 on padding
    logprobs, ref_logprobs, values, entropy, pass_padding = _token_passes(
        policy, critic, reference, tokens, config, autocast, sampled
    )

    prompts = [prompt_texts[i] for i in s.prompt_index.tolist()]  # texts or conversations
    if users is None:
        episode_users, read = None, prompts
        raw = score_fn(prompts, s.completions)  # {"reward_model": (B,), "reward_fn": (B,), ...}
    else:  # the reward model reads the prompts without the prefix, as their user wrote them
        episode_users = [users[i] for i in s.prompt_index.tolist()]  # B users
        read = [
            conditioned_prompt(config, p, u) for p, u in zip(prompts, episode_users, strict=True)
        ]
        raw = score_fn(prompts, s.completions, users=episode_users)
    total = sum(raw[k] for k in SCORE_PARTS if k in raw)  # (B,)
    scores = finish_scores(total.to(mask.device), s.has_eos, config)  # (B,)

    kl = kl_estimate(logprobs, ref_logprobs, mask, config.kl_estimator)  # (B, T)
    rewards = compute_rewards(scores, kl, mask, kl_coef)  # (B, T)
    if config.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = _advantages(rewards, values, mask, config)  # (B, T) each
    rollout = Rollout(
        query_ids=tokens.query_ids,
        query_mask=tokens.query_mask,
        response_ids=tokens.response_ids,
        response_mask=mask,
        logprobs=logprobs,
        ref_logprobs=ref_logprobs,
        values=values,
        entropy=entropy,
        scores=scores,
        kl=kl,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        has_eos=s.has_eos,
        prompts=[render_prompt(tokenizer, p) for p in read],  # as the policy read them
        completions=s.completions,
        users=episode_users,
        score_figures={k: v for k, v in raw.items()
                       if k not in SCORE_PARTS and not k.startswith(USER_FIGURE)} or None,
        pack=config.pack_rows,
        pass_padding=pass_padding,
    )  # fmt: skip
    return rollout, raw


def conditioned_prompt(config: PPOConfig, prompt, user: str):
    """A prompt as --users' conditioned policy reads it for `user`: after the user's
    --user-prefix (a conversation: at the start of its first user turn)."""
    return with_user_prefix(prompt, user_prefix(config.user_prefix, config.conditioning[user]))


def _token_passes(
    policy, critic, reference: Reference, tokens: ResponseBatch, config, autocast, sampled=None
):
    """The rollout's inference passes, micro-batch by micro-batch: (logprobs,
    ref_logprobs, values, entropy), each (B, T); values and entropy 0 on padding,
    values 0 everywhere without a critic (RLOO); and (padded, all) positions of the
    passes, (2,) (`ResponseBatch.padding`). `sampled`: the sampler's (logprobs,
    entropy), each (B, T), taken for the policy's, whose pass is then left out (a
    separate critic or none: `recompute_reason`)."""
    from alignloop.models import ResponseBatch

    with_values = config.advantage == "gae"  # RLOO: no critic, no values
    mask = tokens.response_mask  # (B, T)
    chunks = torch.arange(len(mask)).split(config.minibatch_size // config.grad_accum)
    parts = []
    padding = 0
    with torch.inference_mode(), autocast():
        for idx in chunks:
            batch = ResponseBatch(
                tokens.query_ids[idx], tokens.query_mask[idx], tokens.response_ids[idx], mask[idx],
                pack=tokens.pack,
            )  # fmt: skip
            padding = padding + batch.padding()
            if sampled is None:
                logits, values = forward(policy, critic, batch, config.temperature,
                                         values=with_values)  # fmt: skip
                logprobs = logprobs_from_logits(logits, batch.response_ids)  # (b, T)
                entropy = entropy_from_logits(logits)  # (b, T)
            else:
                logprobs, entropy = sampled[0][idx], sampled[1][idx]  # (b, T) each
                values = critic_values(critic, batch) if with_values else None  # (b, T)
            ref_logprobs = reference.logprobs(batch, config.temperature)  # (b, T)
            parts.append((logprobs, ref_logprobs, values, entropy))
    # Out of inference mode from here: these tensors take part in autograd later.
    logprobs, ref_logprobs, values, entropy = (
        torch.cat(p).clone() if p[0] is not None else torch.zeros_like(mask)  # RLOO: no values
        for p in zip(*parts, strict=True)
    )
    return logprobs, ref_logprobs, values * mask, entropy * mask, padding.clone()


def recompute_reason(config: PPOConfig, policy, mixed_precision: str) -> str | None:
    """Why the rollout runs a policy pass after sampling for its old log-probabilities,
    or None where it takes the sampler's (`make_rollout(sampler_logprobs=True)`; issue
    17). `policy`: the rollout's (bare) policy; `mixed_precision`: the accelerator's
    ("no", "bf16", "fp16"). With --recompute-logprobs never, an error where the
    sampler keeps none or the pass runs anyway, else None.

    Measured (tiny Llamas of hidden 64 and 256, 2 and 4 layers, 16 prompts x 16 tokens,
    AMD EPYC, AVX2): in float32 on CPU the sampler's log-probabilities are a full pass's to
    9.5e-7 at most (50-84% of tokens bit for bit; the KV cache's one-row matmuls sum in
    another order), with LoRA, a --users prefix, T 0.7 and 1, eager or SDPA attention,
    so PPO's first-epoch ratio is 1 to 1e-6 against a clip range of 0.2; there auto
    takes them. Under bf16 autocast (--mixed-precision bf16) the pass runs in bf16 and
    sampling in float32: up to 4.9e-3 apart, no token equal. bfloat16 weights and GPUs
    are not measured here: auto runs the pass. DDP changes nothing: rollouts sample
    and run their passes on the bare modules.

    What taking them changes: the KL of a policy still equal to its reference is the
    difference (about 1e-7 a token) where the one pass gave 0 exactly, so where every
    advantage would be 0 (that policy, every RLOO group's scores tied) whitening makes
    that noise the advantages and Adam takes a step (a 2-step RLOO run: approx_kl 0
    -> 4e-4); elsewhere a 2-step run's metrics move by 1e-7 or so, a clip fraction by a
    token or two (issue 17)."""
    from alignloop.generate import _has_standard_cache

    choice = config.recompute_logprobs
    generator = policy.policy if _value_head(config) else policy
    if choice == "always":
        return "--recompute-logprobs always"
    if _value_head(config):  # refused with never by PPOConfig
        return "--critic policy-head: its values come from the same pass"
    if not _has_standard_cache(generator):
        if choice == "never":
            raise ConfigError(
                f"--recompute-logprobs never: {config.policy} samples through transformers' "
                "generate (no standard KV cache), which keeps no log-probabilities; use auto"
            )
        return "the policy samples through transformers' generate, which keeps none"
    if choice == "never":
        return None
    if mixed_precision != "no":
        return f"--mixed-precision {mixed_precision}: the pass runs under autocast, sampling not"
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in generator.parameters()})
    if dtypes != ["float32"]:
        return f"the policy's weights are {', '.join(dtypes)}: checked equal in float32 only"
    device = next(generator.parameters()).device.type
    if device != "cpu":
        return f"the policy is on {device}: checked equal on CPU only"
    return None


def _advantages(rewards, values, mask, config: PPOConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages, returns), both (B, T): GAE over the critic's values, or RLOO's
    leave-one-out baseline without a critic; whitened when configured."""
    if config.advantage == "gae":
        advantages, returns = gae(rewards, values, mask, config.gamma, config.lam)
    else:
        returns = rewards.sum(1)  # (B,) score - beta * KL of each episode
        advantages = rloo_advantages(returns, config.samples_per_prompt)[:, None] * mask
        returns = returns[:, None] * mask  # (B, T): what the episode earned, at every token
    if config.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    return advantages, returns


# --- the PPO update ----------------------------------------------------------------------


def ppo_update(
    accelerator,
    policy,
    critic,
    optimizers,
    rollout: Rollout,
    config: PPOConfig,
    generator: torch.Generator,
    *,
    step: int = 0,
    checkpoints: Checkpoints | None = None,
) -> dict[str, float]:
    """`ppo_epochs` passes over the rollout in shuffled minibatches of clipped policy
    and value losses; each minibatch is one optimizer step, accumulated over
    `grad_accum` micro-batches. Returns the mean diagnostics of this process. A
    non-finite loss stops every process (`step`, `checkpoints`: for its message)."""
    models = [m for m in (policy, critic) if m is not None]
    for m in models:
        m.train()
    B = len(rollout.scores)
    micro_size = config.minibatch_size // config.grad_accum
    stats: dict[str, list[torch.Tensor]] = {}
    padding = 0  # (padding, all) positions of the passes, on the device: read at the end
    for _ in range(config.ppo_epochs):
        b_inds = torch.randperm(B, generator=generator)
        for start in range(0, B, config.minibatch_size):
            mb_micro = b_inds[start : start + config.minibatch_size].split(micro_size)
            for i, mb_inds in enumerate(mb_micro):
                mb = rollout.select(mb_inds)  # trimmed to its own longest prompt, response
                padding = padding + mb.tokens.padding()
                # DDP all-reduces gradients on the last micro-batch only.
                with _no_sync(accelerator, models, last=i == len(mb_micro) - 1):
                    loss, diagnostics = minibatch_loss(policy, critic, mb, config)
                    stop_unless_finite(
                        accelerator,
                        loss,
                        step,
                        checkpoints,
                        hint="Try a lower --lr or --reward-clip.",
                    )
                    accelerator.backward(loss / config.grad_accum)
                for name, value in diagnostics.items():
                    stats.setdefault(name, []).append(value.detach())
            if config.max_grad_norm > 0:
                for m in models:
                    accelerator.clip_grad_norm_(m.parameters(), config.max_grad_norm)
            for opt in optimizers:
                opt.step()
                opt.zero_grad(set_to_none=True)
    means = {k: torch.stack(v).mean().item() for k, v in stats.items()}
    # The share of padded positions the update's passes computed; untrimmed it would
    # be the rollout's (`ppo/pad_share_rollout`): every episode once per epoch, full width.
    means["pad_share_update"] = (padding[0] / padding[1]).item()
    return means


def minibatch_loss(
    policy, critic, mb: Rollout, config: PPOConfig
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy loss of a micro-batch, plus vf_coef x the clipped value loss
    with a critic (GAE; RLOO has none), and its diagnostics."""
    with_values = config.advantage == "gae"
    new_logits, new_values = forward(
        policy, critic, mb.tokens, config.temperature, values=with_values
    )
    new_logprobs = logprobs_from_logits(new_logits, mb.response_ids)  # (b, T)
    pg_loss, pg_stats = ppo_policy_loss(
        new_logprobs, mb.logprobs, mb.advantages, mb.response_mask, config.clip_eps
    )
    loss, v_loss, vf_clipfrac = pg_loss, None, None
    if with_values:
        v_loss, vf_clipfrac = ppo_value_loss(
            new_values, mb.values, mb.returns, mb.response_mask, config.value_clip_eps
        )
        loss = loss + config.vf_coef * v_loss
    diagnostics = {
        "pg_loss": pg_loss,
        "v_loss": v_loss,
        "approx_kl": pg_stats.approx_kl,
        "clipfrac": pg_stats.clipfrac,
        "vf_clipfrac": vf_clipfrac,
    }
    return loss, {k: v for k, v in diagnostics.items() if v is not None}


def _no_sync(accelerator, models, *, last: bool):
    stack = contextlib.ExitStack()
    if not last:
        for m in models:
            stack.enter_context(accelerator.no_sync(m))
    return stack


def explained_variance(values, returns, mask) -> float:
    """1 - Var[R - V] / Var[R] over response tokens: 1 is a perfect critic, <= 0 one
    no better than a constant."""
    var_returns = masked_var(returns, mask)
    return (1 - masked_var(returns - values, mask) / var_returns.clamp(min=1e-8)).item()


# --- the KL coefficient ------------------------------------------------------------------


class FixedKL:
    """A constant beta."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, kl: float, n_episodes: int) -> None:
        pass

    def state_dict(self) -> dict[str, float]:
        return {"value": self.value}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.value = state["value"]


class AdaptiveKL(FixedKL):
    """beta follows a KL target (Ziegler et al. 2019, sec. 2.2):
    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n / horizon),
    with KL the mean per-response KL of the batch and n its number of episodes."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, kl: float, n_episodes: int) -> None:
        error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon


# --- rewards from text ------------------------------------------------------------------


def load_reward_fn(spec: str) -> RewardFn:
    """'package.module:function' or 'path/to/file.py:function' -> the function."""
    from alignloop.config import load_callable

    return load_callable(spec, "--reward-fn")


@dataclass(frozen=True)
class HeadCombination:
    """How one score is made of a reward model's heads (issue 16): the weighted sum of
    its normalized heads (`losses.combine_heads`), and behind a safety gate, where the
    gate's head is below the threshold, that head's score alone (`losses.safety_gate`:
    Touvron et al. 2023, Llama 2 sec. 3.2.2, simplified).

    With --users, a user's weights each: `user_weights` (U, H), a row per user, and
    each sample weighed by its user's row (`rows`)."""

    heads: list[str]  # the reward model's head names, in the order of its outputs
    weights: torch.Tensor  # (H,) each head's weight; with users, their mean (the critic's)
    gate: int | None = None  # index of --safety-head's head; None: no gate
    threshold: float = 0.0  # --safety-threshold
    users: tuple[str, ...] = ()  # --users, in the order of `user_weights`' rows
    user_weights: torch.Tensor | None = None  # (U, H) each user's weights; None: no users

    def rows(self, users: Sequence[str]) -> torch.Tensor:
        """Each sample's weights (N, H): the row of its user, one of `users` each."""
        unknown = [u for u in users if u not in self.users]
        if self.user_weights is None or unknown:
            raise ValueError(f"no weights of user {unknown[:1] or users[:1]} here "
                             f"(the combination's users: {list(self.users)})")  # fmt: skip
        return self.user_weights[torch.tensor([self.users.index(u) for u in users])]

    def __call__(
        self, scores: torch.Tensor, weights: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """scores (N, H), normalized per head; `weights` (N, H), each sample's own
        (`rows`), or None: `self.weights` for all -> (reward (N,), gated (N,) bool)."""
        if weights is None:
            reward = combine_heads(scores, self.weights)  # (N,)
        else:
            reward = combine_heads_per_sample(scores, weights)  # (N,)
        if self.gate is None:
            return reward, torch.zeros(len(reward), dtype=torch.bool)
        return safety_gate(reward, scores[:, self.gate], self.threshold)


def reward_combination(config: PPOConfig, reward_model) -> HeadCombination | None:
    """The combination of `reward_model`'s heads that --reward, --user, --user-weights
    and --safety-head ask for, checked against its heads (a ConfigError naming the flag
    and the heads). None, for today's score bit for bit: no reward model, or a one-head
    model with none of these flags. A model of several heads without weights takes its
    default (a personal model's average user); a criteria model has none: an error
    naming its heads and --reward NAME=W."""
    if reward_model is None:
        return None
    if config.users:
        return _users_combination(config, reward_model)
    weights = reward_model.resolve_weights(
        reward=config.reward, user=config.user, user_weights=config.user_weights
    )
    if weights is None and reward_model.n_heads == 1 and config.safety_head is None:
        return None
    heads = reward_model.head_names
    vector = reward_model.weight_vector(weights)  # (H,), the default for None
    return HeadCombination(heads, vector, _gate(config, heads), config.safety_threshold)


def _users_combination(config: PPOConfig, reward_model) -> HeadCombination:
    """--users: each user's weights (their rows built as --user builds one), checked
    against the personal model's users (a ConfigError naming --users and them)."""
    known = reward_model.users
    if not known:
        raise ConfigError(
            f"--users: the reward model {config.reward_model} has no users (only `train-rm "
            "--heads personal` gives users); one combination for all: --reward NAME=W"
        )
    users = list(config.conditioning)
    unknown = [u for u in users if u not in known]
    if unknown:
        names = sorted(known)
        more = f", ... ({len(names)} in all)" if len(names) > 8 else ""
        raise ConfigError(
            f"--users {unknown[0]}: not a user of the reward model (its users: "
            f"{', '.join(names[:8])}{more})"
        )
    table = torch.stack([reward_model.weight_vector(reward_model.user_weights(u)) for u in users])
    heads = reward_model.head_names
    gate = _gate(config, heads)
    return HeadCombination(
        heads, table.mean(0), gate, config.safety_threshold, tuple(users), table
    )  # table (U, H), its mean (H,)


def _gate(config: PPOConfig, heads: list[str]) -> int | None:
    """The index of --safety-head among the heads (None without one); a ConfigError
    naming the heads when it is not one of them."""
    if config.safety_head is None:
        return None
    if config.safety_head not in heads:
        raise ConfigError(
            f"--safety-head {config.safety_head}: the reward model {config.reward_model} "
            f"has no such head (its heads: {', '.join(heads)})"
        )
    return heads.index(config.safety_head)


def ensemble_members(config: PPOConfig, reward_model) -> list:
    """--reward-ensemble's reward models, loaded frozen on `reward_model`'s device; a
    `ConfigError` naming the folder for one of several heads."""
    from alignloop.models import RewardModel

    members = []
    for path in config.reward_ensemble:
        member = RewardModel.from_pretrained(path, options=config, what="--reward-ensemble")
        if member.n_heads != 1 or reward_model.n_heads != 1:
            raise ConfigError(
                f"--reward-ensemble {path}: an ensemble averages one-head reward models; "
                f"it has {member.n_heads} heads and --reward-model {reward_model.n_heads}"
            )
        member.requires_grad_(False)
        member.eval()
        members.append(member.to(next(reward_model.parameters()).device))
    return members


def make_score_fn(reward_model, reward_fn: RewardFn | None, config: PPOConfig, tokenizer=None):
    """f(prompts, completions) -> {"reward_model": (B,), "reward_fn": (B,)} raw scores.
    The reward model reads the decoded texts, re-encoded with its own tokenizer (a
    conversation rendered with its chat template, the completion as the assistant's
    turn); the reward fn gets each prompt as the policy read it (`tokenizer`'s
    `chat.render_prompt`: a text prompt as it is), with --users without the user's
    prefix, as the user wrote it.

    With a `reward_combination` (a reward model of several heads, or any of --reward,
    --user, --user-weights, --safety-head), "reward_model" is the combination, and the
    answer also holds each head's normalized scores, "score_<head>" (B,), and behind a
    safety gate "safety_gated" (B,): 1.0 where the gate closed. Only the parts in
    `SCORE_PARTS` add up to the score.

    With --users, f(prompts, completions, users=[B names]): each sample weighed by
    its user's weights, and "score_user_<name>" (B,) is that combination on the user's
    samples, NaN on the others' (`_score_figures` averages it over the user's).

    With --reward-ensemble, "reward_model" is the members' mean normalized score minus
    --reward-ensemble-penalty times their std, and "ensemble_std" (B,) that std."""
    combination = reward_combination(config, reward_model)
    options = {"batch_size": config.reward_batch_size, "max_length": config.reward_max_length}
    per_user = combination is not None and bool(combination.users)
    members = ensemble_members(config, reward_model)

    def score(
        prompts: list, completions: list[str], users: Sequence[str] | None = None
    ) -> dict[str, torch.Tensor]:
        if per_user != (users is not None):
            raise ValueError("each sample's user is given exactly when --users is")
        parts = {}
        if reward_model is not None and combination is None:
            with torch.inference_mode():
                scores = torch.tensor([  # (M, B), each model normalized on its own data
                    m.score(prompts, completions, **options) for m in (reward_model, *members)
                ])  # fmt: skip
            parts["reward_model"] = scores[0]
            if members:  # --reward-ensemble
                spread = scores.std(0, correction=0)  # (B,)
                parts["reward_model"] = scores.mean(0) - config.reward_ensemble_penalty * spread
                parts["ensemble_std"] = spread
        elif reward_model is not None:
            with torch.inference_mode():
                heads = reward_model.head_scores(prompts, completions, **options)  # (B, H)
            rows = combination.rows(users) if per_user else None  # (B, H) or None
            parts["reward_model"], gated = combination(heads, rows)  # (B,) each
            for h, name in enumerate(combination.heads):
                parts[f"score_{name}"] = heads[:, h]
            for name in combination.users:
                mine = torch.tensor([u == name for u in users])  # (B,) bool
                parts[USER_FIGURE + name] = parts["reward_model"].masked_fill(~mine, math.nan)
            if combination.gate is not None:
                parts["safety_gated"] = gated.float()
        if reward_fn is not None:
            texts = prompts if tokenizer is None else [render_prompt(tokenizer, p) for p in prompts]
            values = reward_fn(list(texts), list(completions))
            try:
                values = [float(v) for v in values]
            except (TypeError, ValueError) as e:
                raise TrainingError(
                    f"--reward-fn {config.reward_fn} must return one float per completion: {e}"
                ) from e
            if len(values) != len(completions):
                raise TrainingError(
                    f"--reward-fn {config.reward_fn} returned {len(values)} "
                    f"scores for {len(completions)} completions"
                )
            parts["reward_fn"] = config.reward_fn_coef * torch.tensor(values)
        return parts

    return score


# --- building the run ----------------------------------------------------------------


def load_prompts(path: Path) -> list:
    """The prompt records of --prompts (texts or conversations); none is an error."""
    from alignloop.io import read_prompts

    prompts = read_prompts(path)
    if not prompts:
        raise SchemaError(f"{path}: --prompts holds no prompts")
    return prompts


def build_models(config: PPOConfig, console):
    """(policy, critic or None, reference, reward model or None, tokenizer). The
    policy is a `PolicyWithValueHead` when the critic is a head on it."""
    from alignloop.models import (
        PolicyWithValueHead,
        RewardModel,
        add_lora,
        disable_dropout,
        frozen_copy,
        load_policy,
    )

    policy, tokenizer = load_policy(config.policy, options=config, what="--policy")
    if tokenizer.pad_token == tokenizer.eos_token:
        console.print(
            "[yellow]the policy's tokenizer has no pad token: EOS serves as pad "
            "(responses are cut at their first EOS, so no text is lost)[/yellow]"
        )
    if tokenizer.eos_token_id is None:
        raise ConfigError(
            f"{config.policy}: the tokenizer has no EOS token; responses could never end"
        )
    reward_model = None
    if config.reward_model is not None:
        reward_model = RewardModel.from_pretrained(
            config.reward_model, options=config, what="--reward-model", new_head=config.new_head
        )
        reward_model.requires_grad_(False)
        reward_model.eval()
    # The heads' weights checked now, before minutes of work, and the critic's start.
    combination = reward_combination(config, reward_model)
    if config.lora_r > 0:
        policy = add_lora(policy, r=config.lora_r, alpha=config.lora_alpha)
    if config.reference is not None:  # another policy than the start, e.g. the SFT one
        other, _ = load_policy(config.reference, options=config, what="--reference")
        reference = Reference(frozen_copy(other), adapter_off=False)
    elif config.lora_r > 0:
        reference = Reference(policy, adapter_off=True)
    else:
        reference = Reference(frozen_copy(policy), adapter_off=False)
    if config.gradient_checkpointing:
        policy.gradient_checkpointing_enable()
        if config.lora_r > 0:
            policy.enable_input_require_grads()

    critic = None
    if config.advantage == "rloo":
        pass  # no critic: the other responses to a prompt are the baseline
    elif config.critic == "policy-head":
        policy = PolicyWithValueHead(policy)
    else:
        critic = _separate_critic(config, tokenizer, combination)
    disable_dropout(policy)
    return policy, critic, reference, reward_model, tokenizer


def _separate_critic(config: PPOConfig, tokenizer, combination: HeadCombination | None = None):
    """A `ValueModel` from --value-model, else the reward model, else the policy's
    checkpoint; it must read the policy's tokens. A start of several heads gives one
    value: the combination's weighted sum of its heads (the safety gate left out: the
    critic learns the rest), one head is taken as it is."""
    from alignloop.models import ValueModel, disable_dropout

    source = config.value_model or config.reward_model or config.policy
    weights = None
    if combination is not None:
        weights = dict(zip(combination.heads, combination.weights.tolist(), strict=True))
    critic = ValueModel.from_pretrained(
        source, options=config, what="the critic's start", weights=weights
    )
    rm = critic.reward_model
    if rm.tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ConfigError(
            f"the critic ({source}) and the policy have different "
            "vocabularies, so the critic cannot read the policy's tokens: "
            "use --critic policy-head or --value-model"
        )
    rm.prepare_for_training(
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        gradient_checkpointing=config.gradient_checkpointing,
    )
    disable_dropout(critic)
    return critic


def _value_head(config: PPOConfig) -> bool:
    """Whether the critic is a value head on the policy (a `PolicyWithValueHead`)."""
    return config.advantage == "gae" and config.critic == "policy-head"


def _optimizers(config: PPOConfig, policy, critic) -> list[torch.optim.Optimizer]:
    """AdamW with eps 1e-5 (the TL;DR reproductions' value); the critic at --value-lr."""
    from alignloop.train.common import adamw

    value_lr = config.value_lr or config.lr
    kw = {"weight_decay": config.weight_decay, "eps": 1e-5}
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    if _value_head(config):
        head = set(map(id, policy.value_head.parameters()))
        groups = [
            {"params": [p for p in trainable(policy) if id(p) not in head], "lr": config.lr},
            {"params": list(policy.value_head.parameters()), "lr": value_lr},
        ]
        return [adamw(groups, **kw)]
    if critic is None:  # RLOO
        return [adamw(trainable(policy), lr=config.lr, **kw)]
    return [
        adamw(trainable(policy), lr=config.lr, **kw),
        adamw(trainable(critic), lr=value_lr, **kw),
    ]


def _prompt_rows(config: PPOConfig, policy, tokenizer, texts) -> list[list[int]]:
    """Prompt token ids, cut from the left so prompt + response fit the context."""
    from alignloop.models import prompt_token_limit, tokenize_prompts

    limit = prompt_token_limit(policy, config.max_prompt_length, config.max_new_tokens)
    rows, cut = tokenize_prompts(tokenizer, [render_prompt(tokenizer, t) for t in texts], limit)
    if cut:
        warnings.warn(
            f"{config.prompts}: {cut} of {len(rows)} prompts are longer than {limit} "
            "tokens and lost their start",
            stacklevel=2,
        )
    return rows


def _check_conditioning(config: PPOConfig, tokenizer, texts: list, rows, limit: int) -> None:
    """--users before any rollout: the policy must read the users' prefixes as
    different tokens (a tokenizer of a closed vocabulary reads every name it does not
    know alike: a ConfigError naming --users and the remedy, NAME=KEY), and a warning
    counts the prompts too long to keep their start, where the prefix is."""
    from alignloop.models import tokenize_prompts

    users = config.conditioning
    first = [render_prompt(tokenizer, conditioned_prompt(config, texts[0], u)) for u in users]
    seen: dict[tuple[int, ...], str] = {}
    for user, ids in zip(users, tokenize_prompts(tokenizer, first, 10**9)[0], strict=True):
        other = seen.setdefault(tuple(ids), user)
        if other != user:
            raise ConfigError(
                f"--users {other},{user}: the policy's tokenizer reads their prefixes "
                f"{user_prefix(config.user_prefix, users[other])!r} and "
                f"{user_prefix(config.user_prefix, users[user])!r} as the same tokens "
                "(words it does not know?), so the policy could not tell them apart: "
                "give each a key it knows, --users NAME=KEY"
            )
    plain = tokenize_prompts(tokenizer, [render_prompt(tokenizer, texts[0])], 10**9)[0][0]
    longest = max(len(ids) for ids in seen) - len(plain)  # the longest prefix's tokens
    cut = sum(len(r) + longest > limit for r in rows)
    if cut:
        warnings.warn(
            f"{config.prompts}: {cut} of {len(rows)} prompts leave no room for a user's "
            f"prefix within {limit} tokens: cut from the left, they lose (part of) it and "
            "the policy cannot tell whose they are (raise --max-prompt-length?)",
            stacklevel=2,
        )


def _schedule(config: PPOConfig, n_prompts: int, world: int) -> tuple[int, int, str]:
    """(full batches per pass over the prompts, total steps, what limits them)."""
    per_step = config.batch_size * world
    per_epoch = n_prompts // per_step
    if per_epoch == 0:
        raise ConfigError(
            f"{n_prompts} prompts are fewer than one rollout needs "
            f"(--batch-size {config.batch_size} x {world} processes)"
        )
    episodes = per_step * config.samples_per_prompt
    limits = []
    if config.max_steps is not None:
        limits.append((config.max_steps, "max_steps"))
    if config.max_episodes is not None:
        limits.append((math.ceil(config.max_episodes / episodes), "max_episodes"))
    if not limits:
        limits.append((per_epoch, "one pass over the prompts"))
    total, reason = min(limits)
    return per_epoch, total, reason


# --- the loop ----------------------------------------------------------------------------


@dataclass
class PPORun:
    """What the steps of one run share, built once by `set_up_run`."""

    config: PPOConfig
    accelerator: Any  # accelerate.Accelerator
    console: Any  # rich Console, quiet on every process but the main one
    checkpoints: Checkpoints
    texts: list  # the prompts: texts, or conversations (`chat.render_prompt`)
    rows: list[list[int]]  # their token ids, cut to fit the policy's context
    prompt_limit: int  # the most prompt tokens (--users' prefixed prompts are cut to it)
    per_epoch: int  # full batches per pass over the prompts
    total_steps: int
    limit_reason: str  # what sets total_steps
    policy: Any  # prepared for training (DDP with several processes)
    critic: Any  # likewise; None with a value head on the policy or with RLOO
    rollout_policy: Any  # the bare modules: rollouts need no DDP
    rollout_critic: Any
    sampler_logprobs: bool  # the rollout's old log-probabilities are the sampler's
    reference: Reference
    tokenizer: Any
    optimizers: list[torch.optim.Optimizer]
    schedulers: list  # raw LR schedulers, stepped once per PPO step
    kl_ctl: FixedKL
    score_fn: Callable[[list[str], list[str]], dict[str, torch.Tensor]]
    log: MetricsLog  # metrics.jsonl
    samples_log: MetricsLog  # samples.jsonl
    rollouts_log: MetricsLog  # rollouts.jsonl (with --log-rollouts)
    # step (at set-up), epoch, batch, episodes, kl, reward_history: where the run
    # stands, what a checkpoint keeps besides models, optimizers, schedulers and RNG
    state: dict = dataclasses.field(default_factory=dict)

    def save(self, step: int) -> Path:
        """A checkpoint of the run after `step` steps; returns its directory."""
        keep = {k: self.state[k] for k in ("epoch", "batch", "episodes", "reward_history")}
        return self.checkpoints.save(
            self.accelerator, step, {**keep, "kl": self.kl_ctl.state_dict()}
        )


def train_ppo(config: PPOConfig) -> dict:
    """Tune `config.policy` with PPO; save it in `config.out` with metrics.jsonl,
    samples.jsonl and final_metrics.json. Returns the final metrics."""
    run = set_up_run(config)
    step, stop_reason, record = run.state["step"], None, {}
    started = time.perf_counter()
    bar, task = progress(run.total_steps, "ppo", enabled=run.accelerator.is_main_process)
    bar.update(task, completed=step)
    with bar:
        while stop_reason is None:
            if step >= run.total_steps:
                stop_reason = run.limit_reason
                break
            t0 = time.perf_counter()
            rollout, stats = collect_rollout(run, step)
            if (stop_reason := kl_budget_spent(config, stats)) is not None:
                break
            update = update_policy(run, rollout, stats, step)
            step += 1
            episodes = advance(run, rollout, stats)
            record = log_step(run, step, rollout, {**stats, **update}, episodes, t0)
            if config.save_every and step % config.save_every == 0:
                run.save(step)
            bar.update(
                task,
                completed=step,
                status=f"reward {stats['reward_mean']:.3f} kl {stats['kl']:.3f}",
            )
            stop_reason = reward_target_met(config, run.state["reward_history"])
    return finish_run(run, step, stop_reason, record, started)


# set-up


def set_up_run(config: PPOConfig) -> PPORun:
    """The accelerator, models, optimizers and schedule of a run, and its state:
    fresh, or that of the last checkpoint with --resume."""
    from alignloop.models import prompt_token_limit

    accelerator, console, checkpoints = _start(config)
    sharded = ("FSDP", "DEEPSPEED", "MEGATRON_LM")
    if config.pack_rows and accelerator.distributed_type.value in sharded:
        # packed rows read the LM head outside the model's forward, which a sharded
        # model does not allow
        raise ConfigError(
            f"--pack-rows runs on one process or DDP, not {accelerator.distributed_type.value}"
        )
    prompts = load_prompts(config.prompts)
    texts = [p.prompt for p in prompts]
    reward_fn = load_reward_fn(config.reward_fn) if config.reward_fn else None
    torch.manual_seed(config.seed)  # the same initial weights (LoRA, heads) everywhere
    policy, critic, reference, reward_model, tokenizer = build_models(config, console)
    if reward_model is not None:
        reward_model.to(accelerator.device)
    if not reference.adapter_off:
        reference.model.to(accelerator.device)
    require_template(tokenizer, prompts, config.policy)
    if reward_model is not None:  # it renders conversations with its own template
        require_template(reward_model.tokenizer, prompts, config.reward_model)
    rows = _prompt_rows(config, policy, tokenizer, texts)
    limit = prompt_token_limit(policy, config.max_prompt_length, config.max_new_tokens)
    if config.users:
        _check_conditioning(config, tokenizer, texts, rows, limit)
    world = accelerator.num_processes
    per_epoch, total_steps, limit_reason = _schedule(config, len(rows), world)
    policy, critic, optimizers, schedulers = _prepare(
        accelerator, config, policy, critic, total_steps
    )
    kl_ctl = (
        AdaptiveKL(config.kl_coef, config.kl_target, config.kl_horizon)
        if config.kl_target is not None
        else FixedKL(config.kl_coef)
    )
    reason = recompute_reason(config, accelerator.unwrap_model(policy), accelerator.mixed_precision)
    out, main = Path(config.out), accelerator.is_main_process
    run = PPORun(
        config=config,
        accelerator=accelerator,
        console=console,
        checkpoints=checkpoints,
        texts=texts,
        rows=rows,
        prompt_limit=limit,
        per_epoch=per_epoch,
        total_steps=total_steps,
        limit_reason=limit_reason,
        policy=policy,
        critic=critic,
        # Rollouts need no DDP: generation and inference passes use the bare modules.
        rollout_policy=accelerator.unwrap_model(policy),
        rollout_critic=None if critic is None else accelerator.unwrap_model(critic),
        sampler_logprobs=reason is None,
        reference=reference,
        tokenizer=tokenizer,
        optimizers=optimizers,
        schedulers=schedulers,
        kl_ctl=kl_ctl,
        score_fn=make_score_fn(reward_model, reward_fn, config, tokenizer),
        log=MetricsLog(out / "metrics.jsonl", enabled=main),
        samples_log=MetricsLog(out / "samples.jsonl", enabled=main),
        rollouts_log=MetricsLog(out / "rollouts.jsonl", enabled=main and config.log_rollouts),
    )
    # Each process its own sampling stream; restored from a checkpoint on resume.
    torch.manual_seed(config.seed + accelerator.process_index)
    _resume_or_start(run)
    if config.report_to != "none":
        accelerator.init_trackers(
            "alignloop-ppo", config={k: str(v) for k, v in vars(config).items()}
        )
    console.print(
        f"policy {config.policy}: {len(rows)} prompts, {total_steps} steps of "
        f"{config.batch_size * config.samples_per_prompt * world} episodes on "
        f"{world} process(es); old log-probabilities: "
        + ("the sampler's" if reason is None else f"a policy pass after sampling ({reason})")
    )
    return run


def _start(config: PPOConfig):
    """(accelerator, console, checkpoints); an error if --out holds an earlier run."""
    from rich.console import Console

    from alignloop.train.common import make_accelerator

    out = Path(config.out)
    accelerator = make_accelerator(
        mixed_precision=config.mixed_precision, grad_accum=1, report_to=config.report_to, out=out
    )
    console = Console(stderr=True, quiet=not accelerator.is_main_process, soft_wrap=True)
    checkpoints = Checkpoints(out / "checkpoints", keep=config.keep_checkpoints)
    if not config.resume and checkpoints.complete():
        raise ConfigError(
            f"{out} holds checkpoints of an earlier run: pass --resume to go "
            "on from them, or choose another --out"
        )
    return accelerator, console, checkpoints


def _prepare(accelerator, config: PPOConfig, policy, critic, total_steps: int):
    """(policy, critic, optimizers, schedulers) prepared for (distributed) training."""
    from transformers import get_scheduler

    optimizers = _optimizers(config, policy, critic)
    schedulers = [
        get_scheduler(
            config.scheduler, opt, math.ceil(config.warmup_ratio * total_steps), total_steps
        )
        for opt in optimizers
    ]
    models = [policy] if critic is None else [policy, critic]
    prepared = accelerator.prepare(*models, *optimizers)
    policy, critic = prepared[0], (None if critic is None else prepared[1])
    optimizers = list(prepared[len(models) :])
    # Raw schedulers, stepped once per PPO step (accelerate's wrapper would step them
    # once per process); saved with the checkpoints all the same.
    accelerator.register_for_checkpointing(*schedulers)
    return policy, critic, optimizers, schedulers


def _resume_or_start(run: PPORun) -> None:
    """The state of the last checkpoint (--resume), or a fresh one with fresh logs;
    the logs cut back to the state's step either way."""
    config, logs = run.config, (run.log, run.samples_log, run.rollouts_log)
    run.state = {
        "step": 0,
        "epoch": 0,
        "batch": 0,
        "episodes": 0,
        "kl": run.kl_ctl.state_dict(),
        "reward_history": [],
    }
    if config.resume and (latest := run.checkpoints.latest()) is not None:
        run.state = run.checkpoints.load(run.accelerator, latest)
        run.kl_ctl.load_state_dict(run.state["kl"])
        run.console.print(f"resumed from {latest} (step {run.state['step']})")
    elif run.accelerator.is_main_process:
        Path(config.out).mkdir(parents=True, exist_ok=True)
        for log in logs:
            log.path.unlink(missing_ok=True)  # a fresh run starts fresh logs
    for log in logs:
        log.truncate_after(run.state["step"])


# one step: rollout, then update


def collect_rollout(run: PPORun, step: int) -> tuple[Rollout, dict[str, float]]:
    """This process's next batch of prompts, sampled, scored and evaluated, and the
    episode statistics over every process. A NaN score stops the run."""
    config, state, accelerator = run.config, run.state, run.accelerator
    batches = epoch_batches(
        len(run.rows),
        config.batch_size,
        seed=config.seed,
        epoch=state["epoch"],
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )[: run.per_epoch]
    indices = batches[state["batch"]]
    users, rows = None, [run.rows[i] for i in indices]
    if config.users:  # the run's prompts so far on every process: where the cycle stands
        start = (step * accelerator.num_processes + accelerator.process_index) * len(indices)
        users = assign_users(list(config.conditioning), len(indices), seed=config.seed,
                             start=start)  # fmt: skip
        rows = _conditioned_rows(run, [run.texts[i] for i in indices], users)
    rollout, raw = make_rollout(
        run.rollout_policy,
        run.rollout_critic,
        run.reference,
        run.tokenizer,
        rows,
        [run.texts[i] for i in indices],
        run.score_fn,
        run.kl_ctl.value,
        config,
        accelerator.autocast,
        users=users,
        sampler_logprobs=run.sampler_logprobs,
    )
    _check_scores(accelerator, raw, config, run.checkpoints, step, run.save)
    stats = _rollout_stats(accelerator, rollout, run.kl_ctl.value)
    return rollout, {**stats, **_score_figures(accelerator, raw)}


def _conditioned_rows(run: PPORun, texts: list, users: list[str]) -> list[list[int]]:
    """The token ids of prompts as --users' policy reads them, each after its user's
    prefix, cut from the left to the run's prompt limit (`_check_conditioning` warned
    at set-up of the prompts whose prefix that cuts)."""
    from alignloop.models import tokenize_prompts

    conditioned = [
        render_prompt(run.tokenizer, conditioned_prompt(run.config, t, u))
        for t, u in zip(texts, users, strict=True)
    ]
    return tokenize_prompts(run.tokenizer, conditioned, run.prompt_limit)[0]


def update_policy(run: PPORun, rollout: Rollout, stats: dict[str, float], step: int):
    """The PPO update on `rollout`, then one step of the LR schedulers and of the KL
    controller. Returns the update's diagnostics, averaged over the processes."""
    config, accelerator = run.config, run.accelerator
    rank = accelerator.process_index
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step * 101 + rank)
    update = ppo_update(
        accelerator,
        run.policy,
        run.critic,
        run.optimizers,
        rollout,
        config,
        generator,
        step=step,
        checkpoints=run.checkpoints,
    )
    for s in run.schedulers:
        s.step()
    update = _reduce_mean(accelerator, update)
    run.kl_ctl.update(stats["kl"], len(rollout.scores) * accelerator.num_processes)
    return update


def advance(run: PPORun, rollout: Rollout, stats: dict[str, float]) -> int:
    """Count a finished step in the run's state; returns its episodes (all processes)."""
    state = run.state
    episodes = len(rollout.scores) * run.accelerator.num_processes
    state["episodes"] += episodes
    state["batch"] += 1
    if state["batch"] == run.per_epoch:
        state["epoch"], state["batch"] = state["epoch"] + 1, 0
    history = state["reward_history"] + [stats["reward_mean"]]
    state["reward_history"] = history[-run.config.reward_window :]
    return episodes


# logging


def log_step(
    run: PPORun, step: int, rollout: Rollout, figures: dict[str, float], episodes: int, t0: float
) -> dict:
    """Write the step's metrics (and rollouts, samples when due); returns its record."""
    config = run.config
    record = {f"ppo/{k}": v for k, v in figures.items()}
    record.update(
        {
            "ppo/beta": run.kl_ctl.value,
            "ppo/lr": run.schedulers[0].get_last_lr()[0],
            "ppo/episodes": run.state["episodes"],
            "ppo/episodes_per_sec": episodes / (time.perf_counter() - t0),
        }
    )
    run.log.write({"step": step, **record})
    if config.report_to != "none":
        run.accelerator.log(record, step=step)
    users = rollout.users or [None] * len(rollout.prompts)
    parts = {k: v.tolist() for k, v in (rollout.score_figures or {}).items()}  # (B,) each
    for i, (prompt, completion, score, kl, user) in enumerate(zip(
        rollout.prompts, rollout.completions, rollout.scores.tolist(),
        rollout.kl.sum(1).tolist(), users, strict=True,
    )):  # fmt: skip
        line = {"step": step, "prompt": prompt, "completion": completion, "score": score, "kl": kl}
        line.update({k: v[i] for k, v in parts.items()})  # each head's score, the gate
        run.rollouts_log.write(line if user is None else {**line, "user": user})
    if config.sample_every and step % config.sample_every == 0:
        _show_samples(run.console, run.samples_log, rollout, step, config.samples_shown)
    return record


# stop rules (besides max_steps / max_episodes, which set total_steps: `_schedule`)


def kl_budget_spent(config: PPOConfig, stats: dict[str, float]) -> str | None:
    """The stop reason when the rollout's KL is over --kl-budget (checked before the
    update, so the saved policy is the last one within budget)."""
    if config.kl_budget is not None and stats["kl"] > config.kl_budget:
        return f"kl_budget: KL {stats['kl']:.4g} > {config.kl_budget}"
    return None


def reward_target_met(config: PPOConfig, history: list[float]) -> str | None:
    """The stop reason when the mean reward of the last --reward-window steps reaches
    --reward-target."""
    if config.reward_target is not None and len(history) == config.reward_window:
        mean = sum(history) / len(history)
        if mean >= config.reward_target:
            return f"reward_target: mean reward {mean:.4g} >= {config.reward_target}"
    return None


# saving


def finish_run(run: PPORun, step: int, stop_reason: str | None, record: dict, started: float):
    """Save the policy and final_metrics.json; returns the final metrics."""
    from alignloop.io import write_json

    config, accelerator, out = run.config, run.accelerator, Path(run.config.out)
    if not record:  # resumed from a checkpoint of the last step: its metrics are logged
        logged = [r for r in run.log.read() if "ppo/reward_mean" in r and r["step"] <= step]
        record = {k: v for k, v in (logged[-1] if logged else {}).items() if k != "step"}
    final = {
        "steps": step,
        "episodes": run.state["episodes"],
        "stop_reason": stop_reason,
        "num_processes": accelerator.num_processes,
        **record,
        "ppo/seconds": round(time.perf_counter() - started, 2),
    }
    _save_policy(accelerator, run.policy, _value_head(config), run.tokenizer, config, out)
    if accelerator.is_main_process:
        if config.users:  # what `generate --user NAME` reads beside the policy
            save_conditioning(out, config.user_prefix, config.conditioning)
        run.log.write({"step": step, "stop_reason": stop_reason})
        write_json(out / "final_metrics.json", final)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    run.console.print(f"stopped after {step} steps ({stop_reason}); policy saved to {out}")
    return final


def _check_scores(accelerator, raw, config, checkpoints, step, save) -> None:
    """A NaN score stops every process together, after saving the last good state."""
    names = sorted(k for k in raw if k in SCORE_PARTS)
    bad = torch.tensor([float(torch.isnan(raw[n]).any()) for n in names])
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad.to(accelerator.device), reduction="sum").cpu()
    culprits = [n for n, b in zip(names, bad.tolist(), strict=True) if b]
    if not culprits:
        return
    where = {
        "reward_model": f"the reward model {config.reward_model}",
        "reward_fn": f"--reward-fn {config.reward_fn}",
    }
    latest = checkpoints.latest()
    if latest is None or not latest.name.endswith(f"{step:08d}"):
        latest = save(step)
    raise TrainingError(
        f"{' and '.join(where[c] for c in culprits)} returned NaN at step {step + 1}; stopped. "
        f"The state before this step is saved in {latest} (fix the reward, then --resume)."
    )


def _rollout_stats(accelerator, r: Rollout, beta: float) -> dict[str, float]:
    """Episode statistics over every process's rollout (beta: the rollout's KL coef)."""
    mask = r.response_mask
    kl_sum = r.kl.sum(1)  # (B,)
    per_episode = torch.stack(
        [
            r.scores,
            kl_sum,
            mask.sum(1),
            (~r.has_eos).float(),
            r.entropy.sum(1),
            (r.values * mask).sum(1),
            r.query_mask.sum(1) + mask.sum(1),  # real positions of the episode's row
            torch.full_like(kl_sum, r.query_ids.shape[1] + mask.shape[1]),  # all positions
        ],
        dim=1,
    )  # (B, 8)
    if accelerator.num_processes > 1:
        per_episode = accelerator.gather(per_episode.to(accelerator.device)).cpu()
    scores, kl, lengths, no_eos, entropy, values, real, width = per_episode.unbind(1)
    local_ev = torch.tensor([explained_variance(r.values, r.returns, mask)])
    ev = _reduce_mean(accelerator, {"ev": local_ev.item()})["ev"]
    stats = {
        "reward_mean": scores.mean().item(),
        "reward_std": scores.std().item() if len(scores) > 1 else 0.0,
        "kl": kl.mean().item(),
        "rlhf_reward": (scores - beta * kl).mean().item(),
        "entropy": (entropy.sum() / lengths.sum()).item(),
        "response_length": lengths.mean().item(),
        "no_eos_frac": no_eos.mean().item(),
        "value_mean": (values.sum() / lengths.sum()).item(),
        "explained_variance": ev,
        # Padded share of the rollout's passes: sampling (prefill of the left-padded
        # prompts, then a step per row until the longest response ends) and the policy,
        # reference and value passes all run on these (B, Q + T) rows (issue 17).
        "pad_share_rollout": 1.0 - (real.sum() / width.sum()).item(),
    }
    if r.pass_padding is not None:
        # the policy, reference and value passes as they ran: the same rows, or packed
        # ones with --pack-rows (sampling stays on the padded rows)
        share = (r.pass_padding[0] / r.pass_padding[1]).item()
        stats["pad_share_passes"] = _reduce_mean(accelerator, {"p": share})["p"]
    return stats


def _score_figures(accelerator, raw: dict[str, torch.Tensor]) -> dict[str, float]:
    """The means over every process's episodes of the score function's figures (each
    head's score_<head>, safety_gated; each user's score_user_<name> over their own
    episodes, left out in a step that gave them none), the raw score parts left out."""
    names = [k for k in raw if k not in SCORE_PARTS]
    if not names:
        return {}
    per_episode = torch.stack([raw[k].float() for k in names], dim=1)  # (B, F)
    if accelerator.num_processes > 1:
        per_episode = accelerator.gather(per_episode.to(accelerator.device)).cpu()
    figures = dict(zip(names, per_episode.mean(0).tolist(), strict=True))
    for f, name in enumerate(names):  # a user's mean over their own episodes
        if name.startswith(USER_FIGURE):
            mine = per_episode[:, f][~per_episode[:, f].isnan()]
            figures[name] = mine.mean().item() if len(mine) else None
    return {k: v for k, v in figures.items() if v is not None}  # a user without episodes


def _reduce_mean(accelerator, stats: dict[str, float]) -> dict[str, float]:
    if accelerator.num_processes == 1 or not stats:
        return stats
    keys = sorted(stats)
    local = torch.tensor([[stats[k] for k in keys]], device=accelerator.device)
    mean = accelerator.reduce(local, reduction="mean")[0].tolist()
    return dict(zip(keys, mean, strict=True))


def _show_samples(console, samples_log, rollout: Rollout, step: int, n: int) -> None:
    for prompt, completion, score in list(
        zip(rollout.prompts, rollout.completions, rollout.scores.tolist(), strict=True)
    )[:n]:
        samples_log.write(
            {"step": step, "prompt": prompt, "completion": completion, "score": score}
        )
        console.print(
            f"[dim]step {step}[/dim] ...{prompt[-60:]!r} -> [bold]{completion!r}[/bold] "
            f"(score {score:.3f})"
        )


def _save_policy(accelerator, policy, has_value_head, tokenizer, config, out: Path) -> None:
    """The tuned policy as an ordinary HF directory (LoRA merged), or the adapter,
    whose adapter_config.json names the base model by a path that resolves from any
    working directory (absolute), or by its hub id."""
    from alignloop.models import model_reference, save_pretrained

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    model = accelerator.unwrap_model(policy)
    model = model.policy if has_value_head else model
    if config.lora_r > 0 and not config.save_adapter:
        model = model.merge_and_unload()
    elif config.lora_r > 0:
        for adapter in model.peft_config.values():
            adapter.base_model_name_or_path = model_reference(config.policy)
    save_pretrained(model, tokenizer, out)


# --- command line ------------------------------------------------------------------------


if __name__ == "__main__":  # python -m alignloop.train.ppo ARGS is alignloop train-ppo ARGS
    from alignloop.cli import main

    sys.exit(main(["train-ppo", *sys.argv[1:]]))
