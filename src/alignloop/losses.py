"""The losses and tensor math of RLHF, as small pure functions of torch tensors.

Shapes: B = batch (sequences), T = response tokens, V = vocabulary, P = pairs.
A `mask` is 1.0 on the response tokens that count and 0.0 on padding.

- reward model: `pairwise_loss` (Bradley-Terry), `centering_loss`, `user_weight_penalty`
- PPO: `kl_k1` / `kl_k3` (per-token KL estimators), `gae`, `ppo_policy_loss`,
  `ppo_value_loss`, with the masked statistics they need; `rloo_advantages` (no critic)
- a reward of several parts: `combine_heads` (weights over a reward model's heads;
  `combine_heads_per_sample`, a user's weights each),
  `safety_gate` (the safety score alone where it is low)
- log-probabilities and entropy from logits, without full-vocabulary copies

A new variant is a new function here, never a branch on a string.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "PolicyLossStats",
    "centering_loss",
    "combine_heads",
    "combine_heads_per_sample",
    "entropy_from_logits",
    "gae",
    "kl_k1",
    "kl_k3",
    "logprobs_from_logits",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "pairwise_loss",
    "ppo_policy_loss",
    "ppo_value_loss",
    "rloo_advantages",
    "safety_gate",
]


# --- masked statistics -----------------------------------------------------------


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over the positions where `mask` is 1 (over all of them, or along `dim`)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries of `x` (Bessel-corrected by default)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp(min=1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """(x - mean) / std over the masked entries; padding comes out as 0.

    With `shift_mean=False` the mean is added back: whitening rewards that way keeps
    their sign information (the convention of lm-human-preferences)."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + 1e-8)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


# --- reward model ------------------------------------------------------------------


def pairwise_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None
) -> torch.Tensor:
    """Bradley-Terry loss per pair, -log sigmoid(r_chosen - r_rejected - margin): (P,).

    The margin (Llama 2, eq. 2) asks for a larger gap on pairs known to be far apart.
    Returned per pair so the trainer chooses the averaging (per prompt, as InstructGPT)."""
    diff = r_chosen - r_rejected  # (P,)
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff)


def centering_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Mean squared reward: a small multiple of it keeps scores near 0, since the
    pairwise loss sees only differences (Eisenstein et al. 2023, "reward centering")."""
    return (rewards**2).mean()


def user_weight_penalty(user_weights: torch.Tensor) -> torch.Tensor:
    """Mean over users of the squared norm of their weights (U, D) -> (): a factorized
    reward w_u . f is the same for c * w_u and f / c, and a small multiple of this
    pins the scale of the weights (the features take the rest)."""
    return (user_weights.float() ** 2).sum(-1).mean()


def user_weight_spread(user_weights: torch.Tensor) -> torch.Tensor:
    """Mean over users of the squared distance of their weights (U, D) from the users'
    mean, relative to the mean's squared norm -> (): a multiple of it shrinks each user
    toward the panel (a Gaussian prior centered on the mean user), so a user moves away
    only as far as their own pairs have evidence for, and one who ranks as most do
    scores as the pooled view. Relative, because w . f is the same for c * w and f / c:
    an absolute spread would be undone by larger features and smaller weights."""
    w = user_weights.float()
    mean = w.mean(0, keepdim=True)  # (1, D)
    return ((w - mean) ** 2).sum(-1).mean() / (mean**2).sum().clamp(min=1e-8)


# --- log-probabilities -------------------------------------------------------------


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log p(label) under softmax(logits): (B, T, V), (B, T) -> (B, T).

    Gathers the label's logit and subtracts the log-normaliser instead of building
    the full (B, T, V) log_softmax tensor: one vocabulary-sized copy fewer."""
    picked = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1)  # (B, T)
    return picked - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: (B, T, V) -> (B, T)."""
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1)


# --- KL to the reference -----------------------------------------------------------


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token KL estimate log pi(a) - log ref(a) for a ~ pi (Schulman's k1):
    unbiased, can be negative per token. The standard RLHF penalty."""
    return logprobs - ref_logprobs


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator, (r - 1) - log r with r = ref(a) / pi(a): unbiased and
    never negative, lower variance than k1 when pi is close to ref."""
    log_ratio = ref_logprobs - logprobs
    return torch.expm1(log_ratio) - log_ratio


# --- advantages --------------------------------------------------------------------


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation (Schulman et al. 2016) over response tokens.

    rewards, values, mask: (B, T), responses right-padded (mask 1...1 0...0). The
    episode ends at each response's last token, so the value after it is 0.
    Returns (advantages, returns), both (B, T) and 0 on padding; returns =
    advantages + values, the value head's target.
    """
    values = values * mask
    rewards = rewards * mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])  # (B,) A_{t+1}
    T = rewards.shape[1]
    # A sequential recursion over time, vectorised over the batch.
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last = (delta + gamma * lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def rloo_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """REINFORCE leave-one-out baseline (Kool et al. 2019; Ahmadian et al. 2024): each
    response's return minus the mean return of the other k - 1 responses to the same
    prompt. returns: (B,), the k responses of a prompt adjacent -> (B,)."""
    grouped = returns.view(-1, k)  # (P, k)
    others = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)  # (P, k) leave-one-out mean
    return (grouped - others).view(-1)  # (B,)


# --- a reward of several parts (issue 16) -------------------------------------------


def combine_heads(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One reward from a reward model's heads: sum_h w_h * s_h. scores (N, H), each
    head normalized; weights (H,) -> (N,)."""
    return scores @ weights.to(scores.dtype)  # (N,)


def combine_heads_per_sample(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """`combine_heads` with each sample's own weights (a user each): scores (N, H),
    weights (N, H) -> (N,). Each distinct row of weights is applied to the whole batch
    as `combine_heads` applies it, so a sample's reward is bit for bit the one its row
    alone gives (one user's samples among others score as that user's alone)."""
    distinct, which = torch.unique(weights, dim=0, return_inverse=True)  # (U, H), (N,)
    per_row = torch.stack([combine_heads(scores, w) for w in distinct], dim=1)  # (N, U)
    return per_row.gather(1, which[:, None]).squeeze(1)  # (N,)


def safety_gate(
    reward: torch.Tensor, safety: torch.Tensor, threshold: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where the safety head's score is below `threshold`, that score alone is the
    reward. reward (N,), safety (N,) -> (reward (N,), gated (N,) bool).

    Touvron et al. 2023 (Llama 2), sec. 3.2.2, simplified: there the gate also closes
    on every prompt tagged unsafe, its threshold (0.15) is on a safety model's
    probability-like score, the other branch is the helpfulness score alone, and the
    result is whitened after a logit; here it is one normalized head against
    `threshold`, over any combination of heads, and nothing else."""
    gated = safety < threshold  # (N,) bool
    return torch.where(gated, safety.to(reward.dtype), reward), gated


# --- PPO losses --------------------------------------------------------------------


@dataclass
class PolicyLossStats:
    """Diagnostics of one policy-loss evaluation (scalars, detached)."""

    approx_kl: torch.Tensor  # E[(log ratio)^2 / 2], pi_old -> pi drift of this update
    clipfrac: torch.Tensor  # share of tokens whose ratio was clipped


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, PolicyLossStats]:
    """The clipped surrogate objective, negated to a loss; all inputs (B, T).

    max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)) per token, masked mean."""
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = PolicyLossStats(
            approx_kl=masked_mean(0.5 * log_ratio**2, mask),
            clipfrac=masked_mean((clipped > unclipped).float(), mask),
        )
    return loss, stats


def ppo_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss, 0.5 * max((v - R)^2, (v_clipped - R)^2), masked mean; all
    (B, T). The new value may move at most `clip_eps` from the rollout's value per
    update, as the policy's ratio may. Returns (loss, share of clipped tokens)."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    loss_unclipped = (values - returns) ** 2
    loss_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(loss_unclipped, loss_clipped), mask)
    with torch.no_grad():
        clipfrac = masked_mean((loss_clipped > loss_unclipped).float(), mask)
    return loss, clipfrac
