"""The peer's side of each workload: TRL's trainers on the same prepared inputs, each
in its own environment (alignloop is not installed there):

    benchmarks/.venv-trl116/bin/python benchmarks/trl_side.py reward|rloo --spec S --out R
    benchmarks/.venv-trl112/bin/python benchmarks/trl_side.py ppo --spec S --out R

- reward: `trl.RewardTrainer` (TRL 1.16) on the pairs pre-tokenized exactly as
  alignloop tokenizes them (columns chosen_ids / rejected_ids, which TRL accepts as
  a processed data set), so neither side sees a token the other does not.
- ppo: `trl.experimental.ppo.PPOTrainer` (TRL 1.12, the last release with PPO):
  policy, a separate reference copy, reward model, value model started from it.
- rloo: `trl.RLOOTrainer` (TRL 1.16) with the reward model as its reward function.

Everything is fp32 on the CPU, no gradient checkpointing (TRL's configs default to
bf16 and checkpointing on; both are switched off, as on alignloop's side), no
checkpoints, no reporting backend.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Phases, child_main, read_jsonl, versions  # noqa: E402

COMMON = {
    "bf16": False,
    "fp16": False,
    "gradient_checkpointing": False,
    "use_cpu": True,
    "report_to": "none",
    "save_strategy": "no",
    "dataloader_num_workers": 0,
    "disable_tqdm": False,
}


def _versions() -> dict:
    return versions("torch", "transformers", "accelerate", "datasets", "trl")


def reward(spec: dict, phases: Phases) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    with phases("train_call"):
        tokenizer = AutoTokenizer.from_pretrained(spec["model"])
        model = AutoModelForSequenceClassification.from_pretrained(
            spec["model"], num_labels=1, dtype=torch.float32
        )
        train = Dataset.from_list(read_jsonl(Path(spec["train_ids"])))
        held = Dataset.from_list(read_jsonl(Path(spec["eval_ids"])))
        args = RewardConfig(
            output_dir=spec["out"],
            per_device_train_batch_size=spec["batch_size"],
            per_device_eval_batch_size=spec["eval_batch_size"] // 2,  # pairs: 2 sequences each
            num_train_epochs=spec["epochs"],
            learning_rate=spec["lr"],
            lr_scheduler_type="linear",
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_length=None,  # already cut to max_length by the same rule as alignloop's
            logging_steps=10,
            eval_strategy="no",
            seed=spec["seed"],
            **COMMON,
        )
        trainer = RewardTrainer(
            model=model,
            args=args,
            train_dataset=train,
            eval_dataset=held,
            processing_class=tokenizer,
        )
        started = time.perf_counter()
        out = trainer.train()
        train_seconds = time.perf_counter() - started
        own = trainer.evaluate()
        trainer.save_model(spec["out"])
    return {
        "train_seconds": round(train_seconds, 3),
        "trainer_train_runtime": out.metrics.get("train_runtime"),
        "own_eval": {"accuracy": own.get("eval_accuracy"), "margin": own.get("eval_margin")},
        "optimizer": str(args.optim),
        "model_dir": spec["out"],
        "versions": _versions(),
    }


def _scores(log_history: list[dict], key: str) -> list[float]:
    return [r[key] for r in log_history if key in r]


def ppo(spec: dict, phases: Phases) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    with phases("train_call"):
        tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"], padding_side="left")
        load_lm = lambda: AutoModelForCausalLM.from_pretrained(  # noqa: E731
            spec["policy"], dtype=torch.float32
        )
        load_rm = lambda: AutoModelForSequenceClassification.from_pretrained(  # noqa: E731
            spec["reward_model"], num_labels=1, dtype=torch.float32
        )
        policy, ref_policy = load_lm(), load_lm()
        value_model, reward_model = load_rm(), load_rm()
        prompts = [r["prompt"] for r in read_jsonl(Path(spec["prompts"]))]
        ids = tokenizer(prompts)["input_ids"]
        too_long = [len(x) for x in ids if len(x) > spec["max_prompt_length"]]
        if too_long:
            raise ValueError(f"{spec['prompts']}: {len(too_long)} prompts exceed the limit")
        train = Dataset.from_dict({"input_ids": ids})
        args = PPOConfig(
            output_dir=spec["out"],
            per_device_train_batch_size=spec["minibatch_size"] // spec["grad_accum"],
            gradient_accumulation_steps=spec["grad_accum"],
            num_mini_batches=spec["batch_size"] // spec["minibatch_size"],
            num_ppo_epochs=spec["ppo_epochs"],
            total_episodes=spec["steps"] * spec["batch_size"],
            response_length=spec["response_length"],
            stop_token="eos",
            temperature=spec["temperature"],
            missing_eos_penalty=None,
            kl_coef=spec["kl_coef"],
            kl_estimator="k1",
            cliprange=0.2,
            vf_coef=0.1,
            cliprange_value=0.2,
            gamma=1.0,
            lam=0.95,
            whiten_rewards=False,
            learning_rate=spec["lr"],
            lr_scheduler_type="linear",
            adam_epsilon=1e-5,  # alignloop's (the TL;DR reproductions') value
            weight_decay=0.0,
            num_sample_generations=0,  # no extra sampling passes for display
            logging_steps=1,
            seed=spec["seed"],
            **COMMON,
        )
        trainer = PPOTrainer(
            args=args,
            processing_class=tokenizer,
            model=policy,
            ref_model=ref_policy,
            reward_model=reward_model,
            train_dataset=train,
            value_model=value_model,
            eval_dataset=train.select(range(8)),  # required; unused (no sample generations)
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        trainer.save_model(spec["out"])
        tokenizer.save_pretrained(spec["out"])
    history = trainer.state.log_history
    return {
        "episodes": trainer.state.episode,
        "train_seconds": round(train_seconds, 3),
        "score_per_step": _scores(history, "objective/scores"),
        "kl_per_step": _scores(history, "objective/kl"),
        "model_dir": spec["out"],
        "versions": _versions(),
    }


def rloo(spec: dict, phases: Phases) -> dict:
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        AutoTokenizer,
    )
    from trl import RLOOConfig, RLOOTrainer

    with phases("train_call"):
        tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"], padding_side="left")
        policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
        reward_model = AutoModelForSequenceClassification.from_pretrained(
            spec["reward_model"], num_labels=1, dtype=torch.float32
        )
        prompts = [r["prompt"] for r in read_jsonl(Path(spec["prompts"]))]
        train = Dataset.from_dict({"prompt": prompts})
        completions = spec["batch_size"] * spec["k"]  # per optimizer step
        args = RLOOConfig(
            output_dir=spec["out"],
            per_device_train_batch_size=completions // spec["grad_accum"],
            gradient_accumulation_steps=spec["grad_accum"],
            num_generations=spec["k"],
            max_completion_length=spec["response_length"],
            temperature=spec["temperature"],
            top_p=1.0,
            top_k=0,
            beta=spec["kl_coef"],
            num_iterations=1,
            epsilon=0.2,
            normalize_advantages=False,
            learning_rate=spec["lr"],
            lr_scheduler_type="linear",
            adam_epsilon=1e-5,
            weight_decay=0.0,
            max_grad_norm=1.0,
            max_steps=spec["steps"],
            logging_steps=1,
            disable_dropout=True,
            log_completions=False,
            seed=spec["seed"],
            **COMMON,
        )
        trainer = RLOOTrainer(
            model=policy,
            reward_funcs=[reward_model],
            args=args,
            train_dataset=train,
            processing_class=tokenizer,
            reward_processing_classes=[tokenizer],
        )
        started = time.perf_counter()
        trainer.train()
        train_seconds = time.perf_counter() - started
        trainer.save_model(spec["out"])
        tokenizer.save_pretrained(spec["out"])
    history = trainer.state.log_history
    return {
        "episodes": trainer.state.global_step * completions,
        "train_seconds": round(train_seconds, 3),
        "score_per_step": _scores(history, "reward"),
        "kl_per_step": _scores(history, "kl"),
        "model_dir": spec["out"],
        "versions": _versions(),
    }


if __name__ == "__main__":
    child_main({"reward": reward, "ppo": ppo, "rloo": rloo})
