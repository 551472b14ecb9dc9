"""Options of `alignloop loop`: each field's help text is its `--help`; a YAML, TOML
or JSON file (`--config loop.yaml`) sets the same keys, flags win, unknown keys are
an error. The server source's admin token comes from $ALIGNLOOP_ADMIN_TOKEN, never
from a flag or the file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from alignloop.config import REQUIRED, ConfigError, Options, option

Source = Literal["simulated", "server", "judge"]

# Keys a resumed run may change: the stop rules and how it is shown, not what a
# finished stage computed.
RESUMABLE_KEYS = frozenset({
    "rounds", "target_win_rate", "target_reward", "label_budget", "stop_on_no_gain",
    "min_gain", "wait_s", "min_share", "poll_s", "server", "threads",
})  # fmt: skip


@dataclass
class LoopConfig(Options):
    """Rounds of RLHF: sample, rank, pairs, reward model, PPO, evaluate; again.
    The defaults suit the built-in world's tiny models (`alignloop world build`)."""

    # inputs and outputs
    out: Path = option(REQUIRED, "run directory: state.json, round-N/, metrics.json")
    policy: str = option(
        REQUIRED, "start policy, e.g. the SFT model: round 1 samples from it; 'sft' below"
    )
    prompts: Path = option(
        REQUIRED, "training prompts: each round labels the next --prompts-per-round of "
        "them (from the start again when they run out); PPO tunes on all of them"
    )  # fmt: skip
    eval_prompts: Path | None = option(
        None, "held-out prompts each round is evaluated on (default: no evaluation)"
    )
    judge: str | None = option(
        None,
        "evaluation judge 'module:function' or 'file.py:function', judge(prompt, "
        "completion) -> float (the built-in world's: alignloop.world:gold_utility): win "
        "rates, and the reward model's accuracy on the policy's samples",
    )
    seed: int = option(0, "seed of every stage (round N's sampling, labels and PPO: seed + N - 1)")
    threads: int | None = option(None, "torch CPU threads (none: torch's default)")
    # the rounds and when they stop
    rounds: int = option(3, "most rounds", at_least=1)
    target_win_rate: float | None = option(
        None, "stop once a round's policy beats the start policy on this share of held-out "
        "prompts (by --judge, else by the round's reward model)"
    )  # fmt: skip
    target_reward: float | None = option(
        None, "stop once a round's mean held-out score (the judge's, else the reward "
        "model's) reaches this"
    )  # fmt: skip
    label_budget: int | None = option(
        None, "most rankings in all rounds: the last round labels fewer prompts to fit, "
        "and the loop stops when it is spent", at_least=1
    )  # fmt: skip
    stop_on_no_gain: bool = option(
        False, "stop when a round's held-out win rate over the start policy is not above "
        "the last round's by more than --min-gain"
    )  # fmt: skip
    min_gain: float = option(0.0, "the gain --stop-on-no-gain asks for")
    # sampling the completions people rank
    prompts_per_round: int = option(500, "prompts labelled each round", at_least=1)
    round_prompts: list[int] = option(
        [], "prompts labelled in each round, one number per round (the last one for any "
        "later round); default: --prompts-per-round every round"
    )  # fmt: skip
    k: int = option(4, "completions per prompt", at_least=2)
    temperature: float = option(1.0, "sampling temperature (labelled, PPO and eval samples)")
    max_new_tokens: int = option(40, "longest completion in tokens", at_least=1)
    # labelers
    source: Source = option(
        "simulated", "who ranks: simulated (the built-in world's labelers; its prompts "
        "only), server (people on a labeling server) or judge (--ai-judge, RLAIF)"
    )  # fmt: skip
    criteria: list[str] = option(
        ["overall"], "criteria ranked by; a reward model each, PPO uses the first's"
    )
    overlap: int = option(3, "labelers per prompt (simulated and server)", at_least=1)
    labelers: int = option(5, "simulated: size of the labeler pool", at_least=1)
    ai_judge: str | None = option(
        None, "the AI judge: 'module:function' or a reward-model directory. With --source "
        "judge it ranks; with another source it ranks too, and its agreement with the "
        "labelers is reported"
    )  # fmt: skip
    server: str | None = option(None, "server: the labeling server's URL")
    project_prefix: str = option("loop", "server: round N's project is PREFIX-round-N")
    guidelines: Path | None = option(None, "server: the labelers' guidelines (Markdown file)")
    gold: Path | None = option(
        None, "server: a folder of gold items (prompts.jsonl, completions.jsonl, "
        "rankings.jsonl) mixed into every round's project"
    )  # fmt: skip
    gold_rate: float | None = option(None, "server: share of tasks that are gold")
    wait_s: float = option(
        86400.0, "server: after this many seconds a round moves on once --min-share of "
        "its prompts are complete"
    )  # fmt: skip
    min_share: float = option(0.9, "server: the share of complete prompts the deadline asks for")
    poll_s: float = option(10.0, "server: seconds between looks at the project's progress")
    # the reward model
    rm_init: Literal["previous", "scratch"] = option(
        "previous", "each round's reward model starts from the last round's (previous) or "
        "anew from --rm-model (scratch); it trains on all pairs so far"
    )  # fmt: skip
    rm_model: str | None = option(None, "backbone of a new reward model (default: --policy)")
    rm_pairs: Literal["consensus", "all"] = option(
        "consensus", "the reward model trains on each prompt's Bradley-Terry consensus, or "
        "on every labeler's pairs"
    )  # fmt: skip
    rm_epochs: int = option(3, "reward model: passes over the pairs", at_least=1)
    rm_lr: float = option(3e-4, "reward model: learning rate")
    rm_batch_size: int = option(16, "reward model: prompts per step", at_least=1)
    rm_max_length: int = option(128, "tokens of prompt + completion the reward model reads")
    rm_group_by_length: int | None = option(
        None, "reward model: batches sorted by length over windows of N (0: off; default: "
        "train-rm's, off where batches are packed)", at_least=0
    )  # fmt: skip
    rm_held_out: float = option(
        0.1, "share of each round's prompts held out to test its reward model"
    )
    # PPO
    reference: Literal["sft", "previous"] = option(
        "sft", "reference of PPO's KL penalty: the start policy (sft) or the last round's"
    )
    ppo_init: Literal["previous", "start"] = option(
        "previous", "each round's PPO starts from the last round's policy (previous) or "
        "anew from the start policy --policy (start; Stiennon et al. 2020 and Bai et al. "
        "2022 trained each new policy from the supervised one); the round's completions "
        "to label come from the last round's policy either way"
    )  # fmt: skip
    ppo_steps: int = option(100, "PPO steps per round", at_least=1)
    ppo_batch_size: int = option(32, "PPO: prompts per rollout", at_least=2)
    ppo_lr: float = option(1e-4, "PPO: policy learning rate")
    kl_coef: float = option(0.1, "PPO: beta of the KL penalty")
    ppo_save_every: int = option(
        25, "PPO: checkpoint every N steps, where a killed round resumes (0: never)"
    )
    # evaluation
    eval_k: int = option(4, "samples per held-out prompt and policy", at_least=1)
    toxicity: str | None = option("words", "toxicity classifier of the evaluation (none: off)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.source == "server" and not self.server:
            raise ConfigError("--source server needs --server URL (and $ALIGNLOOP_ADMIN_TOKEN)")
        if self.source == "server" and self.guidelines is None:
            raise ConfigError("--source server needs --guidelines FILE (what labelers read)")
        if self.source == "judge" and not self.ai_judge:
            raise ConfigError("--source judge needs --ai-judge ('module:function' or a "
                              "reward-model directory)")  # fmt: skip
        if not self.criteria:
            raise ConfigError("--criteria needs at least one criterion")
        if self.source == "simulated" and len(self.criteria) > 1:
            raise ConfigError("the simulated labelers rank by one criterion")
        if not 0.0 <= self.rm_held_out < 1.0:
            raise ConfigError("--rm-held-out must be in [0, 1)")
        if self.ppo_batch_size % 2:
            raise ConfigError("--ppo-batch-size must be even (two minibatches per rollout)")
