"""Options of `alignloop eval`: each field's help text is its `--help`.

The sampling options are those of `alignloop train-ppo`, one base for both
(`train/base_config.SamplingOptions`: temperature 0.7, 53 new tokens), so the KL
measured here is the KL that PPO's penalty and its `ppo/kl` log measure."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, ConfigError, option, override
from alignloop.train.base_config import DType, SamplingOptions


@dataclass
class EvalConfig(SamplingOptions):
    """Besides these, the sampling options shared with PPO: --reward-model,
    --max-new-tokens, --max-prompt-length, --reward-max-length, --reward-batch-size."""

    # inputs and outputs
    policy: str = option(REQUIRED, "policy to evaluate: a local path or a hub id (a causal LM)")
    prompts: Path = option(
        REQUIRED,
        "prompts file (.jsonl or .parquet); their 'reference' texts, if any, are a baseline too",
    )
    out: Path = option(
        REQUIRED, "output directory: eval.json, completions_*.jsonl, scores.jsonl, report.html, ..."
    )
    adapter: Path | None = option(
        None,
        "a LoRA adapter folder put on --policy, its base (a personalized policy: "
        "train-ppo --lora-r R --save-adapter)",
    )
    reference: str | None = option(
        None, "reference policy (the SFT model, say): KL to it and win rate against it"
    )
    reference_adapter: Path | None = option(
        None,
        "a LoRA adapter folder put on --reference (another user's policy, say; "
        "without it, --reference as it is: the base of --policy --adapter)",
    )
    judge: str | None = option(
        None,
        "a Python judge, 'module:function' or 'file.py:function': f(prompt record, "
        "completion text) -> float, higher is better (alignloop.world:gold_utility for the "
        "built-in world's prompts)",
    )
    judge_name: str = option("gold", "name of --judge in the figures")
    toxicity: str = option(
        "words",
        "toxicity classifier: 'words' (the built-in world's rude words), 'words:FILE' "
        "(one word per line) or a text-classification model directory / hub id",
    )
    toxicity_label: str | None = option(
        None, "the classifier's toxic label (default: 'toxic', 'hate'... if it has one)"
    )
    toxicity_threshold: float = option(0.5, "a text scoring at least this is toxic")
    policy_name: str = option("policy", "name of --policy in the figures")
    reference_name: str = option("reference", "name of --reference in the figures")
    # sampling
    max_prompts: int | None = option(
        None, "evaluate the first N prompts only (default: all)", at_least=1
    )
    k: int = option(1, "completions sampled per prompt and policy", at_least=1)
    temperature: float = override(help="sampling temperature; the KL is measured at it too")
    batch_size: int = option(
        16, "prompts per generate call; sequences per KL forward pass", at_least=1
    )
    seed: int = option(0, "seed of the sampling (each policy samples from the same seed)")
    device: str = option("auto", "torch device: auto (cuda if there is one, else cpu), cpu, cuda")
    dtype: DType = override(help="dtype of the policies and the reward model (auto: the "
                            "checkpoint's)")  # fmt: skip
    # report
    examples: int = option(20, "prompts shown side by side in the report")
    report: bool = option(True, "write report.html beside eval.json")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.examples < 0:
            raise ConfigError("--examples must not be negative")
        if self.temperature <= 0:
            raise ConfigError("--temperature must be positive (evaluation samples)")
        if self.judge is not None and ":" not in self.judge:
            raise ConfigError(f"--judge {self.judge!r}: expected 'module:function'")
        for name in ("policy_name", "reference_name"):
            if getattr(self, name) in ("prompt", "scores", "prompt_reference"):
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(self, name)!r} is taken")
        if self.judge_name in ("id", "prompt_id", "policy", "reward", "kl", "toxicity", "toxic"):
            raise ConfigError(f"--judge-name {self.judge_name!r} is taken by another score")
        if self.reference_adapter is not None and self.reference is None:
            raise ConfigError("--reference-adapter needs --reference, the base it goes on")
        if self.reference is not None and self.policy_name == self.reference_name:
            raise ConfigError("--policy-name and --reference-name must differ")
