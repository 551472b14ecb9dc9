"""Options of `alignloop train-ppo`: each field's help text is its `--help`; the
training and sampling options are the bases' (`base_config.py`).

Defaults follow the TL;DR reproductions (Huang et al. 2024, "The N+ Implementation
Details of RLHF with PPO"; Stiennon et al. 2020): temperature 0.7, 53 new tokens, a
-1 score replacing that of a response without EOS, beta 0.05, gamma 1, lambda 0.95, 4 PPO epochs,
clip 0.2, the critic started from the reward model.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import REQUIRED, ConfigError, flag, option, override
from alignloop.personal.conditioning import DEFAULT_USER_PREFIX, check_user_prefix, parse_users
from alignloop.train.base_config import SamplingOptions, TrainingOptions

Recompute = Literal["auto", "always", "never"]
RECOMPUTE = typing.get_args(Recompute)


@dataclass
class PPOConfig(TrainingOptions, SamplingOptions):
    """Besides these: the bases' optimizer, checkpoint, precision and LoRA options,
    --reward-model and --reward-batch-size (`alignloop train-ppo --help` lists all)."""

    # inputs and outputs
    policy: str = option(REQUIRED, "policy to tune: a local path or a hub id (a causal LM)")
    prompts: Path = option(REQUIRED, "prompts file (.jsonl or .parquet, the schema's prompts)")
    out: Path = option(REQUIRED, "output directory: the tuned policy, metrics.jsonl, checkpoints/")
    reward_fn: str | None = option(
        None,
        "a Python reward, 'module:function' or 'file.py:function': f(prompts, "
        "completions) -> one float each (a conversation's prompt as the policy read it, "
        "templated); added to the reward model's score if both are given",
    )
    reward_fn_coef: float = option(1.0, "weight of --reward-fn in the score")
    # a reward model of several heads (criteria, or a personal model's features): issue 16
    reward: list[str] = option(
        [],
        "NAME=W: weight W of the reward model's head NAME (repeat the flag; in a config "
        "file also a mapping NAME: W); its score is sum W x head, each head normalized. "
        "A one-head model's head is 'reward'; heads not named weigh 0",
        pairs=True,
    )
    user: str | None = option(
        None, "a user (labeler) of a personal reward model: the heads weighed by their weights"
    )
    user_weights: Path | None = option(
        None,
        'a weights file over the reward model\'s heads, JSON {"user": NAME, "weights": '
        "{HEAD: W}} (what `alignloop personal fit` writes)",
    )
    users: list[str] = option(
        [],
        "NAME[,NAME...]: one policy conditioned on several users of a personal reward "
        "model. Each prompt of a rollout goes to one of them in turn (seeded, balanced), "
        "the policy reads it after that user's --user-prefix, the reward model as the "
        "user wrote it (no prefix), and its reward is that user's weights; "
        "`generate --user NAME` samples for one. NAME=KEY: the policy reads KEY for NAME "
        "(a word its tokenizer knows)",
    )
    user_prefix: str = option(
        DEFAULT_USER_PREFIX,
        "with --users: the prefix template, {user} the user's key; before a text prompt, "
        "at the start of a conversation's first user turn",
    )
    safety_head: str | None = option(
        None,
        "the safety gate (Touvron et al. 2023, simplified): where this head's normalized "
        "score is below --safety-threshold, that score alone is the reward",
    )
    safety_threshold: float = option(
        0.0, "the safety gate's threshold (0: the safety head's mean on its training completions)"
    )
    # an ensemble of reward models against over-optimization (Coste et al. 2024)
    reward_ensemble: list[str] = option(
        [],
        "more reward models (one-head, from train-rm; repeat the flag): the score is the "
        "mean of their and --reward-model's normalized scores, minus "
        "--reward-ensemble-penalty times their spread (std). The critic starts from "
        "--reward-model alone",
    )
    reward_ensemble_penalty: float = option(
        0.0, "with --reward-ensemble: the std of the members' scores is subtracted times "
        "this (0: the plain mean; Coste et al.'s uncertainty-weighted objective)", at_least=0.0,
    )  # fmt: skip
    # sampling
    samples_per_prompt: int = option(1, "responses sampled per prompt in a rollout (K)", at_least=1)
    temperature: float = override(help="sampling temperature; the training pass uses it too")
    max_new_tokens: int = override(help="longest response in tokens")
    max_prompt_length: int = override(help="longer prompts lose their start (with a warning)")
    missing_eos_score: float | None = option(
        -1.0,
        "REPLACES the score of a response that does not end with EOS (Huang et al.'s "
        "reference code; none: keep its score)",
    )
    missing_eos_penalty: float | None = option(
        None,
        "TRL's convention: SUBTRACTED from the score of a response that does not end "
        "with EOS, a positive value; when given, --missing-eos-score is not applied",
    )
    reward_max_length: int = override(help="tokens of prompt + response the reward model reads")
    recompute_logprobs: Recompute = option(
        "auto",
        "the rollout's old log-probabilities: never: the sampler's, kept as it samples (no "
        "second policy pass); always: a policy pass after sampling; auto: the sampler's "
        "where they were measured equal to the pass within 1e-6 (float32 weights on CPU, "
        "no mixed precision), the pass elsewhere and with --critic policy-head (whose "
        "values come from it)",
    )
    pack_rows: bool = option(
        False, "run the rollout's policy, reference and value passes and the update on "
        "packed rows: each (prompt, response) without its padding, several to a row "
        "with a block mask and their own positions (the same outputs to float "
        "rounding); one process or DDP, not FSDP or DeepSpeed"
    )  # fmt: skip
    # reward shaping
    kl_coef: float = option(0.05, "beta of the per-token KL penalty (the start value if adaptive)")
    kl_estimator: Literal["k1", "k3"] = option("k1", "per-token KL estimator of the penalty")
    kl_target: float | None = option(
        None, "adaptive beta (Ziegler et al. 2019): the KL per response to aim for"
    )
    kl_horizon: int = option(10000, "adaptive beta: the horizon in episodes", at_least=1)
    reward_clip: float | None = option(None, "clip scores to [-c, c] (none: no clipping)")
    whiten_rewards: bool = option(False, "whiten the per-token rewards of each batch")
    # PPO
    advantage: Literal["gae", "rloo"] = option(
        "gae",
        "gae: a critic and GAE (PPO); rloo: each response's return (score - beta * KL) "
        "minus the mean return of the other responses to its prompt (REINFORCE "
        "leave-one-out, Ahmadian et al. 2024), no critic; needs --samples-per-prompt >= 2",
    )
    batch_size: int = option(16, "prompts per rollout on each process", at_least=1)
    minibatch_size: int = option(8, "responses per optimizer step on each process", at_least=1)
    grad_accum: int = override(help="micro-batches each minibatch is split into")
    ppo_epochs: int = option(4, "passes over each rollout", at_least=1)
    gamma: float = option(1.0, "discount of GAE")
    lam: float = option(0.95, "lambda of GAE")
    clip_eps: float = option(0.2, "PPO's clip range of the probability ratio")
    value_clip_eps: float = option(0.2, "clip range of the value update")
    vf_coef: float = option(0.1, "weight of the value loss")
    whiten_advantages: bool = option(True, "whiten advantages over each batch (response tokens)")
    lr: float = override(3e-6, "policy learning rate (AdamW)")
    value_lr: float | None = option(None, "critic learning rate (default: --lr)")
    warmup_ratio: float = override(0.0)
    # critic and reference
    critic: Literal["separate", "policy-head"] = option(
        "separate", "separate: a value model of its own; policy-head: a value head on the policy"
    )
    value_model: str | None = option(
        None, "start of a separate critic (default: --reward-model, else the policy + new head)"
    )
    lora_r: int = override(
        help="LoRA rank; 0 trains every weight. With LoRA the reference is "
        "the policy with its adapter off (no second copy)",
    )
    save_adapter: bool = option(False, "with LoRA, save only the adapter (default: merged model)")
    reference: str | None = option(
        None,
        "reference policy of the KL penalty, a local path or hub id with the policy's "
        "tokenizer (default: --policy as it starts; with LoRA, its adapter switched off). "
        "The loop passes the SFT policy while later rounds tune from the previous one",
    )
    # stopping
    max_steps: int | None = option(
        None, "stop after this many PPO steps (rollout + update)", at_least=1
    )
    max_episodes: int | None = option(
        None,
        "stop after this many responses in all (default with no --max-steps: one pass "
        "over the prompts)",
        at_least=1,
    )
    reward_target: float | None = option(
        None, "stop once the mean score of the last --reward-window steps reaches this"
    )
    reward_window: int = option(10, "steps averaged for --reward-target", at_least=1)
    kl_budget: float | None = option(None, "stop when the mean KL per response exceeds this")
    # logging and checkpoints
    seed: int = option(0, "seed of the data order and the sampling (process i uses seed + i)")
    sample_every: int = option(10, "show and log a few sample completions every N steps (0: never)")
    samples_shown: int = option(3, "sample completions shown each time")
    log_rollouts: bool = option(
        False, "write every response of every rollout to rollouts.jsonl (step, prompt, "
        "completion, score, kl); with several processes, the main process's share"
    )  # fmt: skip
    save_every: int = override(50)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.advantage == "rloo" and self.samples_per_prompt < 2:
            raise ConfigError(
                "--advantage rloo compares the responses to one prompt: "
                "--samples-per-prompt must be at least 2"
            )
        if self.reward_model is None and self.reward_fn is None:
            raise ConfigError("give --reward-model, --reward-fn or both")
        self._check_head_weights()
        if self.reward_fn is not None and ":" not in self.reward_fn:
            raise ConfigError(f"--reward-fn {self.reward_fn!r}: expected 'module:function'")
        episodes = self.batch_size * self.samples_per_prompt
        if episodes % self.minibatch_size:
            raise ConfigError(
                f"--minibatch-size {self.minibatch_size} must divide the rollout's "
                f"{episodes} responses (--batch-size x --samples-per-prompt)"
            )
        if self.minibatch_size % self.grad_accum:
            raise ConfigError("--grad-accum must divide --minibatch-size")
        if self.recompute_logprobs not in RECOMPUTE:  # from Python: argparse checks flags
            raise ConfigError(
                f"--recompute-logprobs {self.recompute_logprobs!r}: expected one of "
                f"{', '.join(RECOMPUTE)}"
            )
        value_head = self.advantage == "gae" and self.critic == "policy-head"
        if self.recompute_logprobs == "never" and value_head:
            raise ConfigError(
                "--recompute-logprobs never: --critic policy-head's values come from the "
                "policy pass after sampling, so it runs anyway; use auto or always"
            )
        if self.temperature <= 0:
            raise ConfigError("--temperature must be positive (PPO needs sampling)")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty <= 0:
            raise ConfigError(
                f"--missing-eos-penalty {self.missing_eos_penalty}: the penalty is subtracted "
                "(TRL's convention), so it must be positive; to set the score of a response "
                "without EOS itself, use --missing-eos-score"
            )
        if self.lr <= 0 or (self.value_lr is not None and self.value_lr <= 0):
            raise ConfigError("learning rates must be positive")
        if self.kl_target is not None and self.kl_target <= 0:
            raise ConfigError("--kl-target must be positive")
        if self.kl_coef < 0:
            raise ConfigError("--kl-coef must not be negative")
        if not 0.0 <= self.lam <= 1.0 or not 0.0 <= self.gamma <= 1.0:
            raise ConfigError("--gamma and --lam must be in [0, 1]")

    def _check_head_weights(self) -> None:
        """--reward, --user, --user-weights, --safety-head: one way of weighing the
        heads, each with a reward model; --reward's items well formed (the names are
        checked against the model's heads once it is loaded: `ppo.reward_combination`)."""
        if isinstance(self.reward, dict):  # from Python: a mapping, as in a config file
            self.reward = [f"{name}={weight}" for name, weight in self.reward.items()]
        given = [flag(k) for k in ("reward", "user", "user_weights", "users") if getattr(self, k)]
        if len(given) > 1:
            raise ConfigError(
                f"{' and '.join(given)}: give one of --reward, --user, --user-weights, "
                "--users (each sets the weights of the reward model's heads)"
            )
        if self.users:
            parse_users(self.users)
            check_user_prefix(self.user_prefix)
        elif self.user_prefix != DEFAULT_USER_PREFIX:
            raise ConfigError("--user-prefix is the prefix of --users' conditioned policy: "
                              "give --users")  # fmt: skip
        if self.safety_head is not None:
            given.append("--safety-head")
        if given and self.reward_model is None:
            raise ConfigError(f"{given[0]} weighs the heads of a reward model: give --reward-model")
        if self.reward_ensemble and self.reward_model is None:
            raise ConfigError("--reward-ensemble adds reward models to --reward-model: give it")
        if self.reward_ensemble and given:
            raise ConfigError(
                f"--reward-ensemble averages one-head reward models; {given[0]} weighs the "
                "heads of one: give one or the other"
            )
        if self.reward:
            from alignloop.models import parse_head_weights

            parse_head_weights(self.reward, "--reward")
        if not math.isfinite(self.safety_threshold):
            raise ConfigError(f"--safety-threshold {self.safety_threshold}: must be a number")

    @property
    def conditioning(self) -> dict[str, str]:
        """--users as {name: the key the policy reads in its prefix} ({} when not given)."""
        return parse_users(self.users) if self.users else {}

    @property
    def reward_weights(self) -> dict[str, float]:
        """--reward as {head name: weight}, in the order given ({} when not given)."""
        if not self.reward:
            return {}
        from alignloop.models import parse_head_weights

        return parse_head_weights(self.reward, "--reward")
