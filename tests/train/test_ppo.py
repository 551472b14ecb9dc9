"""PPO's pieces: per-token rewards, the no-EOS penalty and the KL controller by hand;
one rollout and one update on a tiny local policy; bad input with clear messages."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from tests.train.conftest import tiny_ppo_config as make_config

from alignloop.config import ConfigError
from alignloop.schema import SchemaError
from alignloop.train import TrainingError
from alignloop.train.ppo import (
    AdaptiveKL,
    FixedKL,
    HeadCombination,
    PPOConfig,
    Rollout,
    _optimizers,
    _prompt_rows,
    _rollout_stats,
    _separate_critic,
    build_models,
    compute_rewards,
    finish_scores,
    forward,
    kl_estimate,
    load_reward_fn,
    make_rollout,
    make_score_fn,
    minibatch_loss,
    ppo_update,
    reward_combination,
    train_ppo,
)

ONE_PROCESS = SimpleNamespace(num_processes=1)  # what _rollout_stats asks an accelerator


@pytest.fixture(scope="module")
def world(make_ppo_world) -> dict:
    """A tiny random policy, 32 world prompts and a reward-function file."""
    return make_ppo_world(32)


# --- by hand ---------------------------------------------------------------------------


def test_compute_rewards_score_at_last_token_kl_penalty_elsewhere():
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.5, 9.9]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards = compute_rewards(scores, kl, mask, kl_coef=0.1)
    expected = torch.tensor([[-0.01, -0.02, -0.03 + 1.0], [-0.04, -0.05 + 2.0, 0.0]])
    torch.testing.assert_close(rewards, expected)


def test_kl_estimates_are_masked():
    logprobs = torch.tensor([[-1.0, -2.0, -0.5]])
    ref = torch.tensor([[-1.5, -1.0, -3.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    torch.testing.assert_close(
        kl_estimate(logprobs, ref, mask, "k1"), torch.tensor([[0.5, -1.0, 0.0]])
    )
    # k3 = (r - 1) - log r with log r = ref - logprobs
    k3 = [math.expm1(-0.5) + 0.5, math.expm1(1.0) - 1.0, 0.0]
    torch.testing.assert_close(kl_estimate(logprobs, ref, mask, "k3"), torch.tensor([k3]))


def test_no_eos_penalty_replaces_the_score_then_clipping(tmp_path, world):
    raw = torch.tensor([3.0, -0.5, 0.2])
    has_eos = torch.tensor([True, False, True])
    config = make_config(world, tmp_path, missing_eos_score=-1.0)
    assert finish_scores(raw, has_eos, config).tolist() == [3.0, -1.0, pytest.approx(0.2)]
    config = make_config(world, tmp_path, missing_eos_score=-1.0, reward_clip=2.0)
    assert finish_scores(raw, has_eos, config).tolist() == [2.0, -1.0, pytest.approx(0.2)]
    config = make_config(world, tmp_path, missing_eos_score=None)
    assert finish_scores(raw, has_eos, config).tolist() == [3.0, -0.5, pytest.approx(0.2)]


def test_missing_eos_penalty_is_trls_subtracted_positive_value(tmp_path, world):
    """--missing-eos-penalty means what it means in TRL: a positive value subtracted
    from the score of a response without EOS (the replacement is then off); a value
    that would reward such responses is refused with the other option's name."""
    raw = torch.tensor([3.0, -0.5, 0.2])
    has_eos = torch.tensor([True, False, True])
    config = make_config(world, tmp_path, missing_eos_penalty=1.0)
    assert finish_scores(raw, has_eos, config).tolist() == [3.0, -1.5, pytest.approx(0.2)]
    for bad in (-1.0, 0.0):
        with pytest.raises(ConfigError, match="must be positive.*--missing-eos-score"):
            make_config(world, tmp_path, missing_eos_penalty=bad)


def test_missing_eos_help_names_each_convention():
    from alignloop.config import ArgumentParser, add_config_arguments
    from alignloop.train.ppo_config import PPOConfig

    parser = ArgumentParser()
    add_config_arguments(parser, PPOConfig)
    text = " ".join(parser.format_help().split())
    assert "--missing-eos-score" in text and "REPLACES the score" in text
    assert "TRL's convention: SUBTRACTED" in text


def test_adaptive_kl_controller_by_hand():
    ctl = AdaptiveKL(0.1, target=6.0, horizon=10000)
    ctl.update(9.0, n_episodes=256)  # error 9/6 - 1 = 0.5, clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    ctl.load_state_dict({"value": 0.1})
    ctl.update(6.6, n_episodes=100)  # error 0.1
    assert ctl.value == pytest.approx(0.1 * (1 + 0.1 * 100 / 10000))
    ctl.load_state_dict({"value": 0.1})
    ctl.update(0.0, n_episodes=1000)  # error -1, clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * (1 - 0.2 * 1000 / 10000))
    fixed = FixedKL(0.05)
    fixed.update(100.0, 1000)
    assert fixed.value == 0.05 and fixed.state_dict() == {"value": 0.05}


def test_rollout_select_trims_padding_columns():
    B, Q, T = 3, 4, 5
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]]).float()
    query_mask = torch.tensor([[1, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]])
    zeros = torch.zeros(B, T)
    r = Rollout(
        query_ids=torch.arange(B * Q).view(B, Q),
        query_mask=query_mask,
        response_ids=torch.arange(B * T).view(B, T),
        response_mask=mask,
        logprobs=zeros,
        ref_logprobs=zeros,
        values=zeros,
        entropy=zeros,
        scores=torch.tensor([1.0, 2.0, 3.0]),
        kl=zeros,
        rewards=zeros,
        advantages=zeros,
        returns=zeros,
        has_eos=torch.tensor([True, True, False]),
        prompts=["a", "b", "c"],
        completions=["x", "y", "z"],
    )
    mb = r.select(torch.tensor([2, 1]))
    assert mb.query_ids.tolist() == [[10, 11], [6, 7]]  # leading all-pad columns dropped
    assert mb.response_ids.tolist() == [[10, 11], [5, 6]]  # longest response is 2
    assert mb.scores.tolist() == [3.0, 2.0] and mb.prompts == ["c", "b"]
    assert mb.logprobs.shape == (2, 2)
    # padding (issue 17): 7 + 8 real of 3 x (4 + 5) positions; trimmed, 3 + 3 of 2 x 4
    assert r.tokens.padding().tolist() == [12.0, 27.0]
    assert mb.tokens.padding().tolist() == [2.0, 8.0]
    stats = _rollout_stats(ONE_PROCESS, r, 0.1)
    assert stats["pad_share_rollout"] == pytest.approx(12 / 27)


def test_packed_rows_lay_each_sequence_out_once_with_its_own_positions():
    """Issue 17, by hand: four (prompt, response) pairs of 5, 2, 3 and 5 real tokens go
    into rows as long as the longest (5, 5, 3 + 2: fewer positions than longer rows
    would leave), each without its padding, positions from 0, a block mask that keeps
    each to itself, and the response tokens read where the padded batch reads them."""
    from alignloop.models import ResponseBatch, _fewest_positions

    query_mask = torch.tensor([[1, 1, 1], [0, 0, 1], [0, 1, 1], [0, 1, 1]])
    response_mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]).float()
    batch = ResponseBatch(
        torch.tensor([[1, 2, 3], [0, 0, 4], [0, 5, 6], [0, 11, 12]]), query_mask,
        torch.tensor([[7, 8, 0], [9, 0, 0], [10, 0, 0], [13, 14, 15]]), response_mask,
        pack=True,
    )  # fmt: skip
    p = batch.packed
    assert p.input_ids.tolist() == [[1, 2, 3, 7, 8], [11, 12, 13, 14, 15], [5, 6, 10, 4, 9]]
    assert p.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    # response token j of a sequence is predicted at its prompt's last token + j
    assert p.read_at.tolist() == [[2, 3, 0], [10 + 3, 0, 0], [10 + 1, 0, 0], [6, 7, 8]]
    sees = p.attention_mask[2, 0]  # row 3: sequence 3 (cols 0-2), then sequence 2 (3-4)
    assert sees[2].tolist() == [True, True, True, False, False]
    assert sees[4].tolist() == [False, False, False, True, True]
    assert batch.padding().tolist() == [0.0, 15.0]  # no position left empty
    assert batch.packed is p  # laid out once
    assert ResponseBatch(batch.query_ids, query_mask, batch.response_ids,
                         response_mask).padding().tolist() == [9.0, 24.0]  # fmt: skip
    # longer rows where they leave fewer positions: 5 + 3 + 3 + 3 in one row of 14
    # (rows of 5 would leave 4 x 5 = 20 positions, rows of 10 two of 8 = 16)
    assert _fewest_positions([5, 3, 3, 3]) == [[0, 1, 2, 3]]
    assert _fewest_positions([5, 2, 3, 5]) == [[0], [3], [2, 1]]


@pytest.mark.parametrize("variant", ["separate", "policy-head", "lora", "rloo"])
def test_packed_rows_compute_what_padded_rows_do(tmp_path, world, variant):
    """Issue 17: --pack-rows gives the rollout and the update what the padded rows
    give, to 1e-5: the same episodes and scores (sampling is untouched), the old and
    the reference's log-probabilities, values, KL, advantages, and a minibatch's
    logits, values, loss and diagnostics; with less padding computed."""
    from alignloop.models import ResponseBatch
    from alignloop.train.common import make_accelerator

    extra = {"lora": {"lora_r": 4}, "rloo": {"advantage": "rloo", "samples_per_prompt": 2}}.get(
        variant, {"critic": variant}
    )
    padded_config = make_config(world, tmp_path / "padded", **extra)
    packed_config = make_config(world, tmp_path / "packed", pack_rows=True, **extra)
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(padded_config)
    runs = []
    for config in (padded_config, packed_config):
        torch.manual_seed(1)
        runs.append(make_rollout(policy, critic, reference, tokenizer, rows, texts, score_fn,
                                 0.05, config)[0])  # fmt: skip
    padded, packed = runs
    assert torch.equal(padded.response_ids, packed.response_ids)
    assert torch.equal(padded.scores, packed.scores) and packed.pack and not padded.pack
    mask = padded.response_mask.bool()
    for name in ("logprobs", "ref_logprobs", "values", "entropy", "kl", "advantages", "returns"):
        a, b = getattr(padded, name), getattr(packed, name)
        torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=1e-5, msg=name)
    share = {r.pack: r.pass_padding[0] / r.pass_padding[1] for r in runs}
    assert share[True] < share[False]

    idx = torch.tensor([0, 3, 5, 6])
    policy.train(False)
    if critic is not None:
        critic.train(False)
    with torch.no_grad():
        outs = [forward(policy, critic, r.select(idx).tokens, padded_config.temperature,
                        values=variant != "rloo") for r in (padded, packed)]  # fmt: skip
        losses = [minibatch_loss(policy, critic, r.select(idx), padded_config)
                  for r in (padded, packed)]  # fmt: skip
    m = padded.select(idx).response_mask.bool()
    torch.testing.assert_close(outs[0][0][m], outs[1][0][m], atol=1e-5, rtol=1e-5)
    if variant == "rloo":
        assert outs[0][1] is None and outs[1][1] is None  # no critic, no values
    else:
        torch.testing.assert_close(outs[0][1][m], outs[1][1][m], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(losses[0][0], losses[1][0], atol=1e-5, rtol=1e-5)
    for k in losses[0][1]:
        torch.testing.assert_close(losses[0][1][k], losses[1][1][k], atol=1e-5, rtol=1e-5)
    assert isinstance(packed.select(idx).tokens, ResponseBatch) and packed.select(idx).pack

    stats = [ppo_update(make_accelerator(mixed_precision="no", out=tmp_path / str(i)), policy,
                        critic, _optimizers(padded_config, policy, critic), r, padded_config,
                        torch.Generator().manual_seed(0))
             for i, r in enumerate((padded, packed))]  # fmt: skip
    assert stats[1]["pad_share_update"] < stats[0]["pad_share_update"]
    assert "pad_share_passes" in _rollout_stats(ONE_PROCESS, packed, 0.1)


def _untrimmed(rollout: Rollout, idx: torch.Tensor) -> Rollout:
    """The episodes `idx` at the rollout's full width, as before trimming."""
    import dataclasses

    def pick(name, v):
        if v is None or isinstance(v, bool) or name == "pass_padding":
            return v
        return [v[i] for i in idx.tolist()] if isinstance(v, list) else v[idx]

    return Rollout(**{f.name: pick(f.name, getattr(rollout, f.name))
                      for f in dataclasses.fields(rollout)})  # fmt: skip


# --- one rollout, one update -----------------------------------------------------------


def _pieces(config: PPOConfig):
    from rich.console import Console

    from alignloop.io import read_records

    torch.manual_seed(0)
    policy, critic, reference, reward_model, tokenizer = build_models(config, Console(quiet=True))
    texts = [p.prompt for p in read_records(config.prompts, "prompt")][: config.batch_size]
    rows = _prompt_rows(config, policy, tokenizer, texts)
    score_fn = make_score_fn(reward_model, load_reward_fn(config.reward_fn), config)
    return policy, critic, reference, tokenizer, rows, texts, score_fn


@pytest.mark.parametrize("variant", ["separate", "policy-head", "lora"])
def test_first_rollout_has_zero_kl_and_an_update_changes_the_parameters(tmp_path, world, variant):
    from alignloop.train.common import make_accelerator

    extra = {"critic": "policy-head"} if variant == "policy-head" else {}
    if variant == "lora":
        extra = {"lora_r": 4}
    config = make_config(world, tmp_path, **extra)
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(config)
    rollout, raw = make_rollout(
        policy, critic, reference, tokenizer, rows, texts, score_fn, 0.05, config
    )
    assert torch.equal(rollout.kl, torch.zeros_like(rollout.kl))  # exactly: policy == ref
    assert torch.equal(rollout.logprobs, rollout.ref_logprobs)
    assert rollout.logprobs.shape == rollout.response_mask.shape == rollout.values.shape
    assert (rollout.logprobs * rollout.response_mask <= 0).all()
    assert (
        rollout.scores.tolist() == finish_scores(raw["reward_fn"], rollout.has_eos, config).tolist()
    )

    models = [m for m in (policy, critic) if m is not None]
    before = {
        (i, n): p.detach().clone() for i, m in enumerate(models) for n, p in m.named_parameters()
    }
    accelerator = make_accelerator(mixed_precision="no", out=tmp_path)
    stats = ppo_update(
        accelerator,
        policy,
        critic,
        _optimizers(config, policy, critic),
        rollout,
        config,
        torch.Generator().manual_seed(0),
    )
    assert {"pg_loss", "v_loss", "approx_kl", "clipfrac", "vf_clipfrac"} <= stats.keys()
    for (i, name), old in before.items():
        p = dict(models[i].named_parameters())[name]
        if variant == "lora" and i == 0 and "lora_" not in name:
            assert torch.equal(p, old), f"{name}: a frozen base weight moved"
        elif variant == "lora" and "lora_A" in name:
            continue  # lora_B starts at 0, so lora_A gets no gradient on the first step
        elif p.requires_grad:
            assert not torch.equal(p, old), f"{name} did not change"


@pytest.mark.parametrize("critic_kind", ["separate", "policy-head"])
def test_trimmed_minibatch_computes_what_the_full_width_one_does(tmp_path, world, critic_kind):
    """Issue 17: a minibatch cut to its own longest prompt (left) and response (right)
    gives its real tokens the log-probs, values and losses of the full-width one (left
    padding, positions from the mask), to 1e-5; the rollout and the update's draw of
    minibatches are as before, and the update computes less padding."""
    from alignloop.train.common import make_accelerator

    config = make_config(world, tmp_path, critic=critic_kind)
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(config)
    rollout, _ = make_rollout(
        policy, critic, reference, tokenizer, rows, texts, score_fn, 0.05, config
    )
    q_len, t_len = rollout.query_mask.sum(1), rollout.response_mask.sum(1)
    assert len(set(q_len.tolist())) > 1  # prompts of different lengths
    idx = torch.argsort(q_len, stable=True)[:3]  # the shortest prompts: columns to drop
    trimmed, full = rollout.select(idx), _untrimmed(rollout, idx)
    Q, T = rollout.query_ids.shape[1], rollout.response_ids.shape[1]
    assert trimmed.query_ids.shape[1] == q_len[idx].max() < Q
    assert trimmed.response_ids.shape[1] == t_len[idx].max() <= T
    policy.eval()  # no dropout: the same function both times
    if critic is not None:
        critic.eval()
    with torch.no_grad():
        logits_t, values_t = forward(policy, critic, trimmed.tokens, config.temperature)
        logits_f, values_f = forward(policy, critic, full.tokens, config.temperature)
        loss_t, stats_t = minibatch_loss(policy, critic, trimmed, config)
        loss_f, stats_f = minibatch_loss(policy, critic, full, config)
    n = trimmed.response_ids.shape[1]
    mask = trimmed.response_mask.bool()
    from alignloop.losses import logprobs_from_logits

    lp_t = logprobs_from_logits(logits_t, trimmed.response_ids)
    lp_f = logprobs_from_logits(logits_f, full.response_ids)[:, :n]
    assert torch.equal(full.response_mask[:, n:], torch.zeros_like(full.response_mask[:, n:]))
    torch.testing.assert_close(lp_t[mask], lp_f[mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(values_t[mask], values_f[:, :n][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss_t, loss_f, atol=1e-5, rtol=1e-5)
    for k in stats_f:
        torch.testing.assert_close(stats_t[k], stats_f[k], atol=1e-5, rtol=1e-5)

    shapes = {k: tuple(v.shape) for k, v in vars(rollout).items() if torch.is_tensor(v)}
    generator = torch.Generator().manual_seed(0)
    stats = ppo_update(
        make_accelerator(mixed_precision="no", out=tmp_path), policy, critic,
        _optimizers(config, policy, critic), rollout, config, generator,
    )  # fmt: skip
    assert {k: tuple(v.shape) for k, v in vars(rollout).items() if torch.is_tensor(v)} == shapes
    drawn = torch.Generator().manual_seed(0)  # the update draws one permutation per epoch
    for _ in range(config.ppo_epochs):
        torch.randperm(len(rollout.scores), generator=drawn)
    assert torch.equal(generator.get_state(), drawn.get_state())
    full_share = _rollout_stats(ONE_PROCESS, rollout, 0.1)
    assert 0 <= stats["pad_share_update"] <= full_share["pad_share_rollout"] < 1


@pytest.mark.parametrize("advantage", ["gae", "rloo"])
def test_rollout_takes_the_samplers_logprobs_without_a_policy_pass(tmp_path, world, advantage):
    """Issue 17: with the sampler's log-probabilities the rollout runs no full policy
    pass (the cached sampling steps only; a separate critic's, the reference's as
    before), draws the same episodes, and its old log-probabilities and entropies are
    the pass's to 1e-5 (9.5e-7 measured at most), so the first epoch's ratio is 1 to
    1e-5; the reference's log-probabilities, the values and the scores are the same bit
    for bit, the KL moves by the difference."""
    extra = {"advantage": "rloo", "samples_per_prompt": 2} if advantage == "rloo" else {}
    config = make_config(world, tmp_path, **extra)
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(config)
    full_passes = []  # one entry per call of the policy: True for a pass without the cache
    policy.register_forward_pre_hook(
        lambda m, args, kwargs: full_passes.append("cache" not in kwargs), with_kwargs=True
    )
    got, passes = {}, {}
    for reuse in (False, True):
        full_passes.clear()
        torch.manual_seed(0)
        got[reuse], _ = make_rollout(policy, critic, reference, tokenizer, rows, texts, score_fn,
                                     0.05, config, sampler_logprobs=reuse)  # fmt: skip
        passes[reuse] = sum(full_passes)
    chunks = config.batch_size * config.samples_per_prompt // config.minibatch_size
    assert passes == {False: chunks, True: 0} and chunks > 1  # a pass per micro-batch, or none
    pass_, sampler = got[False], got[True]
    for name in ("response_ids", "response_mask", "ref_logprobs", "values", "scores"):
        assert torch.equal(getattr(sampler, name), getattr(pass_, name)), name
    on = sampler.response_mask.bool()
    for name in ("logprobs", "entropy", "kl"):
        torch.testing.assert_close(getattr(sampler, name)[on], getattr(pass_, name)[on],
                                   atol=1e-5, rtol=0, msg=name)  # fmt: skip
    assert not sampler.logprobs[~on].any() and not sampler.entropy[~on].any()
    policy.train()  # the update's pass (no dropout): its ratio to the old log-probs
    with torch.no_grad():
        logits, _ = forward(policy, None, sampler.tokens, config.temperature, values=False)
    from alignloop.losses import logprobs_from_logits

    ratio = (logprobs_from_logits(logits, sampler.response_ids) - sampler.logprobs).exp()[on]
    torch.testing.assert_close(ratio, torch.ones_like(ratio), atol=1e-5, rtol=0)


def test_recompute_reason_says_where_the_rollout_runs_the_policy_pass(tmp_path, world,
                                                                       monkeypatch):  # fmt: skip
    """--recompute-logprobs auto takes the sampler's log-probabilities in float32 on CPU
    without mixed precision (a separate critic, RLOO, LoRA: measured equal there); it
    runs the pass with --critic policy-head (its values come from it), under mixed
    precision, for weights in another dtype or on another device, and for a policy that
    samples through transformers' generate. always: the pass; never: the sampler's even
    where auto would not take them, an error where there are none."""
    import copy

    from rich.console import Console

    from alignloop import generate
    from alignloop.train.ppo import recompute_reason

    def reason(precision="no", policy=None, **options):
        config = make_config(world, tmp_path, **options)
        torch.manual_seed(0)
        built, *_ = build_models(config, Console(quiet=True))
        return recompute_reason(config, built if policy is None else policy, precision)

    rloo = {"advantage": "rloo", "samples_per_prompt": 2}
    assert reason() is None
    assert reason(**rloo) is None
    assert reason(lora_r=4) is None
    assert reason(recompute_logprobs="always") == "--recompute-logprobs always"
    assert "--critic policy-head" in reason(critic="policy-head")
    assert reason(critic="policy-head", **rloo) is None  # RLOO has no critic at all
    assert reason("bf16").startswith("--mixed-precision bf16: the pass runs under autocast")
    assert reason("bf16", recompute_logprobs="never") is None
    assert "weights are bfloat16" in reason(dtype="bfloat16")
    policy, *_ = build_models(make_config(world, tmp_path), Console(quiet=True))
    assert "the policy is on meta" in reason(policy=copy.deepcopy(policy).to("meta"))

    monkeypatch.setattr(generate, "_has_standard_cache", lambda m: False)
    assert "through transformers' generate" in reason()
    with pytest.raises(ConfigError, match=r"^--recompute-logprobs never: .* samples through "
                                          r"transformers' generate"):  # fmt: skip
        reason(recompute_logprobs="never")


def test_a_run_takes_the_samplers_logprobs_where_auto_finds_them(tmp_path, world, capsys):
    """train_ppo with auto (float32, CPU) leaves the policy pass out and says so; its
    step is the pass's (always) but for roundoff: the same episodes and scores, the KL,
    entropy and losses within 1e-5."""
    steps = {}
    for mode in ("always", "auto"):
        train_ppo(make_config(world, tmp_path / mode, recompute_logprobs=mode))
        err = capsys.readouterr().err
        said = "the sampler's" if mode == "auto" else "a policy pass after sampling (--recompute"
        assert f"old log-probabilities: {said}" in err, err
        lines = (tmp_path / mode / "metrics.jsonl").read_text().splitlines()
        steps[mode] = json.loads(lines[0])
    always, auto = steps["always"], steps["auto"]
    for key in ("ppo/reward_mean", "ppo/response_length", "ppo/no_eos_frac", "ppo/value_mean"):
        assert auto[key] == always[key], key
    assert always["ppo/kl"] == 0  # the policy is the reference: the same pass, bit for bit
    for key in ("ppo/kl", "ppo/entropy", "ppo/pg_loss", "ppo/v_loss", "ppo/approx_kl"):
        assert auto[key] == pytest.approx(always[key], abs=1e-5), key


def test_rloo_has_no_critic_and_a_leave_one_out_baseline(tmp_path, world):
    """--advantage rloo: no value model or head; every token of a response carries its
    return (score - beta * KL) minus the mean return of the other responses to the
    same prompt; the update has no value loss and moves every policy weight."""
    from alignloop.train.common import make_accelerator

    with pytest.raises(ConfigError, match="samples-per-prompt"):
        make_config(world, tmp_path, advantage="rloo")
    reward = tmp_path / "length.py"  # varies between responses, so advantages are not all 0
    reward.write_text("def length(prompts, completions):\n    return [len(c) for c in completions]")
    config = make_config(
        world, tmp_path, advantage="rloo", samples_per_prompt=2, batch_size=4,
        whiten_advantages=False, reward_fn=f"{reward}:length", missing_eos_score=None,
    )  # fmt: skip
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(config)
    assert critic is None and not hasattr(policy, "value_head")
    rollout, _ = make_rollout(
        policy, critic, reference, tokenizer, rows, texts, score_fn, 0.05, config
    )
    mask = rollout.response_mask
    returns = rollout.rewards.sum(1)  # (B,) score - beta * KL, the 2 of a prompt adjacent
    expected = (returns - returns.view(-1, 2).flip(1).reshape(-1))[:, None] * mask
    torch.testing.assert_close(rollout.advantages, expected)
    assert rollout.advantages.abs().sum() > 0
    assert torch.equal(rollout.values, torch.zeros_like(mask))

    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    stats = ppo_update(
        make_accelerator(mixed_precision="no", out=tmp_path),
        policy,
        None,
        _optimizers(config, policy, None),
        rollout,
        config,
        torch.Generator().manual_seed(0),
    )
    assert "v_loss" not in stats and {"pg_loss", "approx_kl", "clipfrac"} <= stats.keys()
    for name, p in policy.named_parameters():
        assert not torch.equal(p, before[name]), f"{name} did not change"


def test_left_padding_does_not_change_log_probs(tmp_path, world):
    """A prompt padded on the left (in a batch with a longer one) gets the log-probs it
    gets alone: positions count real tokens only."""
    from alignloop.models import ResponseBatch, pad_left

    config = make_config(world, tmp_path)
    policy, critic, _, tokenizer, rows, _, _ = _pieces(config)
    short, long = rows[0][-5:], rows[1]
    response = torch.tensor([[7, 8, 9], [7, 8, 9]])
    mask = torch.ones(2, 3)
    q, qm = pad_left([short, long], tokenizer.pad_token_id)
    with torch.no_grad():
        batched, v_batched = forward(policy, critic, ResponseBatch(q, qm, response, mask), 0.7)
        q1, qm1 = pad_left([short], tokenizer.pad_token_id)
        one = ResponseBatch(q1, qm1, response[:1], mask[:1])
        alone, v_alone = forward(policy, critic, one, 0.7)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(v_batched[:1], v_alone, atol=1e-5, rtol=1e-5)


def test_a_nan_loss_stops_the_update_naming_the_step_and_a_remedy(tmp_path, world):
    from alignloop.train.common import Checkpoints, make_accelerator

    config = make_config(world, tmp_path)
    policy, critic, reference, tokenizer, rows, texts, score_fn = _pieces(config)
    rollout, _ = make_rollout(
        policy, critic, reference, tokenizer, rows, texts, score_fn, 0.05, config
    )
    rollout.advantages = torch.full_like(rollout.advantages, float("nan"))
    with pytest.raises(TrainingError, match=r"loss became nan at step 4.*lower --lr"):
        ppo_update(
            make_accelerator(mixed_precision="no", out=tmp_path),
            policy,
            critic,
            _optimizers(config, policy, critic),
            rollout,
            config,
            torch.Generator().manual_seed(0),
            step=3,
            checkpoints=Checkpoints(tmp_path / "checkpoints"),
        )


def test_prompts_leave_room_for_the_response_in_the_context(world):
    """The tiny policy's context is 128 tokens: a prompt may take what the response
    leaves, with or without a value head on the policy."""
    from alignloop.models import PolicyWithValueHead, load_policy, prompt_token_limit

    policy, _ = load_policy(world["policy"])
    assert prompt_token_limit(policy, 512, 6) == 122
    assert prompt_token_limit(PolicyWithValueHead(policy), 100, 6) == 100
    with pytest.raises(ConfigError, match="--max-new-tokens 128 leaves no room"):
        prompt_token_limit(policy, 512, 128)


# --- a reward model of several heads (issue 16) ------------------------------------------

TEXTS = [
    ("the cat sat on the mat . tl;dr :", " a cat sat ."),
    ("the dog ran in the park . tl;dr :", " the dog ran"),
    ("it rained all day . tl;dr :", " rain , rain ."),
    ("the market was busy . tl;dr :", " busy"),
    ("we walked home late . tl;dr :", " we walked home ."),
    ("the sun set over the hills . tl;dr :", " sun"),
]


def test_head_combination_by_hand():
    scores = torch.tensor([[1.0, 2.0], [3.0, -1.0], [0.5, 0.0]])  # heads a, b
    combination = HeadCombination(["a", "b"], torch.tensor([1.0, 0.5]))
    reward, gated = combination(scores)
    assert reward.tolist() == [2.0, 2.5, 0.5] and not gated.any()  # a + 0.5 b
    # gate on b below 0.5: row 1 (b = -1) and row 2 (b = 0) get b alone
    reward, gated = HeadCombination(["a", "b"], torch.tensor([1.0, 0.5]), 1, 0.5)(scores)
    assert reward.tolist() == [2.0, -1.0, 0.0] and gated.tolist() == [False, True, True]


def test_score_fn_weighs_the_heads_and_the_gate_keeps_the_safety_score_alone(
    tmp_path, world, two_head_rm
):
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(two_head_rm, new_head=False)
    prompts, completions = map(list, zip(*TEXTS, strict=True))
    heads = rm.head_scores(prompts, completions)  # (6, 2), normalized per head
    a, b = heads.unbind(1)
    threshold = b.median().item()  # some rows below it, some not
    config = make_config(
        world, tmp_path, reward_fn=None, reward_model=str(two_head_rm), reward=["a=1", "b=0.5"],
        safety_head="b", safety_threshold=threshold,
    )  # fmt: skip
    raw = make_score_fn(rm, None, config)(prompts, completions)
    gated = b < threshold
    assert 0 < gated.sum() < len(b)
    by_hand = [bi if bi < threshold else ai + 0.5 * bi for ai, bi in heads.tolist()]
    assert torch.allclose(raw["reward_model"], torch.tensor(by_hand), atol=1e-6)
    assert raw["safety_gated"].tolist() == gated.float().tolist()
    assert raw["score_a"].tolist() == a.tolist() and raw["score_b"].tolist() == b.tolist()
    # without the gate: the reward model's own combination, and no gated share
    config = make_config(world, tmp_path, reward_fn=None, reward_model=str(two_head_rm),
                         reward={"a": 1.0, "b": 0.5})  # fmt: skip
    raw = make_score_fn(rm, None, config)(prompts, completions)
    weighed = rm.score(prompts, completions, weights={"a": 1.0, "b": 0.5})
    assert torch.allclose(raw["reward_model"], torch.tensor(weighed), atol=1e-6)
    assert sorted(raw) == ["reward_model", "score_a", "score_b"]


def test_head_errors_name_the_flag_and_the_heads(tmp_path, world, two_head_rm, tiny_rm):
    from rich.console import Console

    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(two_head_rm, new_head=False)

    def config(**options):
        return make_config(world, tmp_path, **{"reward_model": str(two_head_rm), **options})

    with pytest.raises(ConfigError, match=r"^--reward: the reward model has no head 'c' \(its "
                       r"heads: a, b\)"):  # fmt: skip
        reward_combination(config(reward=["a=1", "c=1"]), rm)
    with pytest.raises(ConfigError, match=r"several heads \(a, b\) and no default combination: "
                       r"weigh them with --reward NAME=W"):  # fmt: skip
        reward_combination(config(), rm)
    with pytest.raises(ConfigError, match=r"^--user ann: the reward model has no users"):
        reward_combination(config(user="ann"), rm)
    with pytest.raises(ConfigError, match=r"^--safety-head c: the reward model .* has no such "
                       r"head \(its heads: a, b\)"):  # fmt: skip
        reward_combination(config(reward=["a=1"], safety_head="c"), rm)
    weights = tmp_path / "ann.json"
    weights.write_text(json.dumps({"user": "ann", "weights": {"b": 2.0, "z": 1.0}}))
    with pytest.raises(ConfigError, match=r"--user-weights .*ann.json: the reward model has no "
                       r"head 'z'"):  # fmt: skip
        reward_combination(config(user_weights=weights), rm)
    weights.write_text(json.dumps({"user": "ann", "weights": {"b": 2.0}}))
    assert reward_combination(config(user_weights=weights), rm).weights.tolist() == [0.0, 2.0]
    # a one-head model's head is "reward"; with none of the flags, today's score
    one = RewardModel.from_pretrained(tiny_rm)
    with pytest.raises(ConfigError, match=r"no head 'a' \(its heads: reward\)"):
        reward_combination(config(reward_model=str(tiny_rm), reward=["a=1"]), one)
    assert reward_combination(config(reward_model=str(tiny_rm)), one) is None
    # checked as the models are built, before any rollout
    with pytest.raises(ConfigError, match="no default combination"):
        build_models(config(), Console(quiet=True))


def test_a_personal_model_weighs_by_its_users_or_their_average(tmp_path, world, two_head_rm):
    import shutil

    from alignloop.models import RewardModel

    folder = shutil.copytree(two_head_rm, tmp_path / "personal")
    saved = json.loads((folder / "config.json").read_text())
    saved["alignloop_personal"] = {"users": {"ann": [1.0, 0.0], "bob": [0.25, 2.0]},
                                   "default": [0.625, 1.0]}  # fmt: skip
    (folder / "config.json").write_text(json.dumps(saved))
    rm = RewardModel.from_pretrained(folder, new_head=False)

    def weights(**options):
        config = make_config(world, tmp_path, reward_model=str(folder), **options)
        return reward_combination(config, rm).weights.tolist()

    assert weights(user="bob") == [0.25, 2.0]
    assert weights() == [0.625, 1.0]  # no weights given: the average user
    with pytest.raises(ConfigError, match=r"^--user cy: not a user of the reward model \(its "
                       r"users: ann, bob\)"):  # fmt: skip
        weights(user="cy")


def test_a_one_head_model_weighs_its_head_reward(tmp_path, world, tiny_rm):
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(tiny_rm)
    prompts, completions = map(list, zip(*TEXTS, strict=True))
    config = make_config(world, tmp_path, reward_fn=None, reward_model=str(tiny_rm))
    today = make_score_fn(rm, None, config)(prompts, completions)
    assert sorted(today) == ["reward_model"]  # no per-head figures: today's answer
    doubled = make_score_fn(rm, None, make_config(
        world, tmp_path, reward_fn=None, reward_model=str(tiny_rm), reward=["reward=2"]
    ))(prompts, completions)  # fmt: skip
    assert torch.allclose(doubled["score_reward"], today["reward_model"], atol=1e-6)
    assert torch.allclose(doubled["reward_model"], 2 * today["reward_model"], atol=1e-6)


def test_the_critic_of_two_heads_starts_from_their_combination(tmp_path, world, two_head_rm):
    from alignloop.models import RewardModel, load_tokenizer, pad_right

    config = make_config(world, tmp_path, reward_fn=None, reward_model=str(two_head_rm),
                         reward=["a=1", "b=0.5"], safety_head="b")  # fmt: skip
    rm = RewardModel.from_pretrained(two_head_rm, new_head=False)
    combination = reward_combination(config, rm)
    critic = _separate_critic(config, load_tokenizer(world["policy"]), combination)
    rows = [rm.tokenizer(p + c)["input_ids"] for p, c in TEXTS]
    ids, mask = pad_right(rows, rm.tokenizer.pad_token_id)
    with torch.no_grad():
        values = critic(ids, mask)  # (N, L): one value per token
        per_head = rm.token_scores(ids, mask)  # (N, L, 2): the heads' raw outputs
    gain, bias = map(torch.tensor, rm.head_normalization)  # (2,) each
    by_hand = (per_head * gain + bias) @ torch.tensor([1.0, 0.5])  # a + 0.5 b, ungated
    assert values.shape == ids.shape
    assert torch.allclose(values, by_hand, atol=1e-5)
    assert critic.reward_model.n_heads == 1


# --- configuration and bad input -------------------------------------------------------


def test_config_errors(tmp_path, world):
    with pytest.raises(ConfigError, match="--reward-model, --reward-fn"):
        make_config(world, tmp_path, reward_fn=None)
    with pytest.raises(ConfigError, match="must divide"):
        make_config(world, tmp_path, batch_size=6, minibatch_size=4)
    with pytest.raises(ConfigError, match="module:function"):
        make_config(world, tmp_path, reward_fn="nocolon")
    with pytest.raises(ConfigError, match="temperature"):
        make_config(world, tmp_path, temperature=0.0)
    with pytest.raises(ConfigError, match=r"^--recompute-logprobs 'sometimes': expected one "
                                          "of auto, always, never"):  # fmt: skip
        make_config(world, tmp_path, recompute_logprobs="sometimes")
    with pytest.raises(ConfigError, match=r"^--recompute-logprobs never: --critic policy-head"):
        make_config(world, tmp_path, recompute_logprobs="never", critic="policy-head")


def _parse(argv: list[str]) -> PPOConfig:
    """PPOConfig from command-line flags, as `alignloop train-ppo` reads them."""
    from alignloop.config import ArgumentParser, add_config_arguments, config_from_args

    parser = ArgumentParser()
    add_config_arguments(parser, PPOConfig)
    required = ["--policy", "p", "--prompts", "q.jsonl", "--out", "o", "--reward-model", "rm"]
    return config_from_args(PPOConfig, parser.parse_args([*required, *argv]))


def test_reward_weights_from_repeated_flags_a_mapping_or_python(tmp_path):
    expected = {"helpful": 1.0, "harmless": 0.5}
    assert _parse(["--reward", "helpful=1", "--reward", "harmless=0.5"]).reward_weights == expected
    assert _parse(["--reward", "helpful=1", "harmless=0.5"]).reward_weights == expected
    path = tmp_path / "c.yaml"
    path.write_text("reward:\n  helpful: 1\n  harmless: 0.5\nsafety_head: harmless\n")
    config = _parse(["--config", str(path)])
    assert config.reward_weights == expected and config.safety_head == "harmless"
    assert config.safety_threshold == 0.0
    path.write_text("reward: [helpful=1, harmless=0.5]\n")
    assert _parse(["--config", str(path)]).reward_weights == expected
    # flags win over the file (the list is replaced, not extended)
    assert _parse(["--config", str(path), "--reward", "x=2"]).reward_weights == {"x": 2.0}
    assert _parse([]).reward == [] and _parse([]).reward_weights == {}
    python = PPOConfig(policy="p", prompts="q", out="o", reward_model="rm", reward=expected)
    assert python.reward_weights == expected


def test_reward_weights_errors_name_the_flag(tmp_path, world):
    with pytest.raises(ConfigError, match=r"--reward 'helpful': expected NAME=WEIGHT"):
        _parse(["--reward", "helpful"])
    with pytest.raises(ConfigError, match=r"--reward 'a=x': the weight 'x' is not a number"):
        _parse(["--reward", "a=x"])
    with pytest.raises(ConfigError, match=r"--reward 'a=2': 'a' is given twice"):
        _parse(["--reward", "a=1", "--reward", "a=2"])
    with pytest.raises(ConfigError, match=r"^--reward and --user: give one of"):
        _parse(["--reward", "a=1", "--user", "ann"])
    with pytest.raises(ConfigError, match=r"^--user and --user-weights: give one of"):
        _parse(["--user", "ann", "--user-weights", "w.json"])
    for flags in (["user", "ann"], ["user_weights", tmp_path], ["safety_head", "harmless"],
                  ["reward", ["a=1"]]):  # fmt: skip
        name = "--" + flags[0].replace("_", "-")
        with pytest.raises(ConfigError, match=f"^{name} weighs the heads of a reward model"):
            make_config(world, tmp_path, **{flags[0]: flags[1]})
    with pytest.raises(ConfigError, match="--safety-threshold nan"):
        _parse(["--safety-head", "harmless", "--safety-threshold", "nan"])


def test_reward_fn_loading_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_reward_fn(f"{tmp_path / 'absent.py'}:f")
    with pytest.raises(ConfigError, match="cannot import"):
        load_reward_fn("no_such_module_xyz:f")
    with pytest.raises(ConfigError, match="no function"):
        load_reward_fn("math:no_such_function")
    assert load_reward_fn("math:sqrt")(4) == 2.0


def test_empty_prompts_file_is_a_clear_error(tmp_path, world):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(SchemaError, match="holds no prompts"):
        train_ppo(make_config(world, tmp_path / "out", prompts=empty))


def test_nan_reward_stops_with_the_state_saved(tmp_path, world):
    out = tmp_path / "out"
    with pytest.raises(TrainingError, match="returned NaN at step 1") as info:
        train_ppo(make_config(world, out, reward_fn=world["nan_fn"]))
    assert "--reward-fn" in str(info.value) and "step-00000000" in str(info.value)
    assert (out / "checkpoints" / "step-00000000" / "trainer_state.json").exists()


def test_long_prompts_are_cut_from_the_left_with_a_count(tmp_path, world):
    with pytest.warns(UserWarning, match=r"32 of 32 prompts are longer than 10 tokens"):
        final = train_ppo(make_config(world, tmp_path / "out", max_prompt_length=10))
    assert final["steps"] == 1


def test_policy_without_a_pad_token_uses_eos(tmp_path, world, capsys):
    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.pad_token = None
    model = build_tiny_causal_lm(build_tokenizer(), seed=0, **world["tiny"])
    model.config.pad_token_id = None
    model.generation_config.pad_token_id = None
    save_pretrained(model, tokenizer, tmp_path / "nopad")
    assert (
        json.loads((tmp_path / "nopad" / "tokenizer_config.json").read_text()).get("pad_token")
        is None
    )
    final = train_ppo(make_config(world, tmp_path / "out", policy=str(tmp_path / "nopad")))
    assert final["steps"] == 1
    assert "no pad token: EOS serves as pad" in capsys.readouterr().err


def test_existing_checkpoints_need_resume(tmp_path, world):
    out = tmp_path / "out"
    train_ppo(make_config(world, out, save_every=1))
    with pytest.raises(ConfigError, match="--resume"):
        train_ppo(make_config(world, out, save_every=1))


# --- an ensemble of reward models -----------------------------------------------------


def test_an_ensemble_scores_the_mean_minus_the_penalty_times_the_spread(
    tmp_path, world, tiny_rm, two_head_rm
):
    """--reward-ensemble: each member's normalized score, their mean minus
    --reward-ensemble-penalty times their std (over members), the std logged; one
    member with the plain --reward-model is today's score."""
    from alignloop.models import RewardModel

    rm = RewardModel.from_pretrained(tiny_rm)
    other = RewardModel.from_pretrained(tiny_rm)
    with torch.no_grad():  # another reward model: the head turned and moved
        other.hf_model.score.weight.mul_(-0.5).add_(0.1)
    other.save_pretrained(tmp_path / "other")
    prompts, completions = map(list, zip(*TEXTS, strict=True))
    a = torch.tensor(rm.score(prompts, completions))
    b = torch.tensor(RewardModel.from_pretrained(tmp_path / "other").score(prompts, completions))
    assert not torch.allclose(a, b, atol=1e-3)

    def raw(**options):
        config = make_config(world, tmp_path, reward_fn=None, reward_model=str(tiny_rm),
                             reward_ensemble=[str(tmp_path / "other")], **options)  # fmt: skip
        return make_score_fn(rm, None, config)(prompts, completions)

    spread = (a - b).abs() / 2  # the std of two values, over the members
    mean = raw()
    assert torch.allclose(mean["reward_model"], (a + b) / 2, atol=1e-5)
    assert torch.allclose(mean["ensemble_std"], spread, atol=1e-5)
    careful = raw(reward_ensemble_penalty=0.5)
    assert torch.allclose(careful["reward_model"], (a + b) / 2 - 0.5 * spread, atol=1e-5)
    with pytest.raises(ConfigError, match=r"^--reward-ensemble \S+: an ensemble averages "
                       r"one-head reward models; it has 2 heads"):  # fmt: skip
        make_score_fn(rm, None, make_config(
            world, tmp_path, reward_fn=None, reward_model=str(tiny_rm),
            reward_ensemble=[str(two_head_rm)],
        ))  # fmt: skip
    with pytest.raises(ConfigError, match="--reward-ensemble adds reward models to "
                       "--reward-model: give it"):  # fmt: skip
        make_config(world, tmp_path, reward_ensemble=[str(tiny_rm)])
    with pytest.raises(ConfigError, match="--reward-ensemble averages one-head reward models; "
                       "--reward weighs"):  # fmt: skip
        make_config(world, tmp_path, reward_model=str(tiny_rm), reward=["reward=1"],
                    reward_ensemble=[str(tiny_rm)])  # fmt: skip
