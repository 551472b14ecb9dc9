"""The losses on tensors small enough to compute by hand (the numbers in comments)."""

import math

import pytest
import torch

from alignloop.losses import (
    centering_loss,
    combine_heads,
    entropy_from_logits,
    gae,
    kl_k1,
    kl_k3,
    logprobs_from_logits,
    masked_mean,
    masked_var,
    masked_whiten,
    pairwise_loss,
    ppo_policy_loss,
    ppo_value_loss,
    rloo_advantages,
    safety_gate,
    user_weight_penalty,
    user_weight_spread,
)

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
M = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # masked entries: 1, 2, 4


def close(a, b, tol=1e-6):
    return torch.allclose(torch.as_tensor(a, dtype=torch.float32),
                          torch.as_tensor(b, dtype=torch.float32), atol=tol)  # fmt: skip


def test_masked_mean_and_var():
    assert close(masked_mean(X, M), 7 / 3)
    assert close(masked_mean(X, M, dim=1), [1.5, 4.0])
    # squared deviations from 7/3: 16/9 + 1/9 + 25/9 = 42/9
    assert close(masked_var(X, M), 42 / 9 / 2)
    assert close(masked_var(X, M, unbiased=False), 42 / 9 / 3)


def test_masked_whiten():
    w = masked_whiten(X, M)
    std = math.sqrt(7 / 3)
    assert close(w, [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0], [(4 - 7 / 3) / std, 0, 0]], 1e-5)
    assert close(masked_mean(w, M), 0.0, 1e-6) and close(masked_var(w, M), 1.0, 1e-5)
    kept = masked_whiten(X, M, shift_mean=False)
    assert close(masked_mean(kept, M), 7 / 3, 1e-5)


def test_pairwise_loss():
    loss = pairwise_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert close(loss, [math.log(1 + math.exp(-1)), math.log(2)])
    with_margin = pairwise_loss(
        torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0]), torch.tensor([0.5, 0.0])
    )
    assert close(with_margin, [math.log(1 + math.exp(-0.5)), math.log(2)])
    # the loss falls as the chosen completion's reward rises
    r = torch.tensor([0.0], requires_grad=True)
    pairwise_loss(r, torch.tensor([0.0])).sum().backward()
    assert r.grad.item() == pytest.approx(-0.5)  # d/dr -log sigmoid(r) at 0 = -(1 - 1/2)
    assert close(centering_loss(torch.tensor([1.0, -3.0])), 5.0)


def test_kl_estimators():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert close(kl_k1(logp, ref), math.log(2))
    assert close(kl_k3(logp, ref), (0.5 - 1) - math.log(0.5))  # r = 0.25 / 0.5
    same = torch.randn(4, 5)
    assert torch.equal(kl_k1(same, same), torch.zeros(4, 5))
    assert torch.equal(kl_k3(same, same), torch.zeros(4, 5))
    assert (kl_k3(torch.randn(100), torch.randn(100)) >= 0).all()


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 1.0, 7.0]])  # 7.0 sits on padding: ignored
    values = torch.tensor([[0.5, 0.2, 9.0]])  # 9.0 too
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.5)
    # t=1: delta = 1 + 0 - 0.2 = 0.8 (episode ends) -> A1 = 0.8
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3 -> A0 = -0.3 + 0.5 * 0.8 = 0.1
    assert close(adv, [[0.1, 0.8, 0.0]])
    assert close(ret, [[0.6, 1.0, 0.0]])
    # lambda = 1: the return is the discounted sum of rewards, 0.9 * 1 at t=0
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=1.0)
    assert close(adv, [[0.4, 0.8, 0.0]]) and close(ret, [[0.9, 1.0, 0.0]])


def test_gae_rows_are_independent():
    rewards, values = torch.randn(3, 6), torch.randn(3, 6)
    mask = torch.tensor([[1.0] * 6, [1.0] * 3 + [0.0] * 3, [1.0] + [0.0] * 5])
    adv, _ = gae(rewards, values, mask)
    for i in range(3):
        alone, _ = gae(rewards[i : i + 1], values[i : i + 1], mask[i : i + 1])
        assert torch.allclose(adv[i], alone[0])


def test_ppo_policy_loss_clips_by_hand():
    mask = torch.ones(1, 1)
    up = torch.log(torch.tensor([[1.5]]))
    # A > 0, ratio 1.5: the objective is clipped at 1.2 -> loss -1.2, clipped
    loss, stats = ppo_policy_loss(up, torch.zeros(1, 1), torch.ones(1, 1), mask)
    assert close(loss, -1.2) and close(stats.clipfrac, 1.0)
    assert close(stats.approx_kl, 0.5 * math.log(1.5) ** 2)
    # A < 0, ratio 1.5: the pessimistic (unclipped) term wins -> loss 1.5
    loss, stats = ppo_policy_loss(up, torch.zeros(1, 1), -torch.ones(1, 1), mask)
    assert close(loss, 1.5) and close(stats.clipfrac, 0.0)
    # A > 0, ratio 0.5: unclipped -0.5 is the max
    down = torch.log(torch.tensor([[0.5]]))
    loss, _ = ppo_policy_loss(down, torch.zeros(1, 1), torch.ones(1, 1), mask)
    assert close(loss, -0.5)


def test_ppo_policy_loss_ignores_padding_and_gives_gradient_only_unclipped():
    logp = torch.tensor([[0.0, 0.0, 5.0]], requires_grad=True)
    loss, _ = ppo_policy_loss(logp, torch.zeros(1, 3), torch.ones(1, 3),
                              torch.tensor([[1.0, 1.0, 0.0]]))  # fmt: skip
    loss.backward()
    assert close(loss, -1.0)
    assert close(logp.grad, [[-0.5, -0.5, 0.0]])


def test_ppo_value_loss_by_hand():
    mask = torch.ones(1, 1)
    # v moved 0.5 -> 1.0, clipped to 0.7; target 2: max(1.0, 1.69) / 2
    loss, clipfrac = ppo_value_loss(torch.tensor([[1.0]]), torch.tensor([[0.5]]),
                                    torch.tensor([[2.0]]), mask)  # fmt: skip
    assert close(loss, 0.845) and close(clipfrac, 1.0)
    loss, clipfrac = ppo_value_loss(torch.tensor([[0.6]]), torch.tensor([[0.5]]),
                                    torch.tensor([[2.0]]), mask)  # fmt: skip
    assert close(loss, 0.5 * 1.4**2) and close(clipfrac, 0.0)


def test_logprobs_and_entropy_from_logits():
    logits = torch.randn(2, 3, 11)
    labels = torch.randint(0, 11, (2, 3))
    expected = torch.log_softmax(logits, -1).gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs_from_logits(logits, labels), expected, atol=1e-6)
    assert close(entropy_from_logits(torch.zeros(1, 1, 8)), [[math.log(8)]])
    peaked = torch.tensor([[[100.0, 0.0, 0.0]]])
    assert close(entropy_from_logits(peaked), [[0.0]], 1e-4)


def test_rloo_advantages_by_hand():
    # k = 2: each response against the other one
    returns = torch.tensor([1.0, 3.0, 0.0, 0.0, 5.0, -1.0])
    assert close(rloo_advantages(returns, 2), [-2.0, 2.0, 0.0, 0.0, 6.0, -6.0])
    # k = 3: 1 vs mean(2, 6) = 4; 2 vs mean(1, 6) = 3.5; 6 vs mean(1, 2) = 1.5
    adv = rloo_advantages(torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0]), 3)
    assert close(adv, [-3.0, -1.5, 4.5, -1.5, -1.5, 3.0])
    assert close(adv.view(-1, 3).sum(1), [0.0, 0.0])  # a baseline: zero sum per prompt


def test_combine_heads_and_the_safety_gate_by_hand():
    # heads (helpful, harmless); weights 1 and 0.5
    scores = torch.tensor([[2.0, 1.0], [1.0, -2.0], [-1.0, 0.0], [0.5, -0.25]])
    combined = combine_heads(scores, torch.tensor([1.0, 0.5]))
    assert close(combined, [2.5, 0.0, -1.0, 0.375])  # 2 + .5; 1 - 1; -1 + 0; .5 - .125
    # gate on harmless below 0: rows 1 and 3 get their harmless score alone; row 2 at 0
    # exactly is not below, so it keeps its combination
    reward, gated = safety_gate(combined, scores[:, 1], threshold=0.0)
    assert gated.tolist() == [False, True, False, True]
    assert close(reward, [2.5, -2.0, -1.0, -0.25])
    # a threshold of -1: only row 1 (-2) is below it
    reward, gated = safety_gate(combined, scores[:, 1], threshold=-1.0)
    assert gated.tolist() == [False, True, False, False]
    assert close(reward, [2.5, -2.0, -1.0, 0.375])


def test_the_personal_weight_penalties_by_hand():
    w = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # two users, two features; mean (2, 1)
    # squared norms 1 and 13 -> mean 7; distances from the mean (1, 1) each -> 2 each,
    # relative to the mean's squared norm 5 -> 0.4
    assert user_weight_penalty(w).item() == pytest.approx(7.0)
    assert user_weight_spread(w).item() == pytest.approx(0.4)
    assert user_weight_spread(3 * w).item() == pytest.approx(0.4)  # c * w, f / c: the same
    assert user_weight_spread(torch.tensor([[0.5, -1.0]] * 3)).item() == 0.0  # all alike
