"""Supervised fine-tuning: teach a causal LM to write the targets of a prompt file.

The first stage of RLHF (Stiennon et al. 2020; Ouyang et al. 2022): before any
preference is collected, the policy learns to imitate demonstrations, here the
prompts' `reference` texts or a completions file joined to the prompts.

    example  = prompt tokens + target tokens + EOS
    loss     = mean cross-entropy over target tokens and EOS only (the prompt is
               context, not something to learn to write)

The target is tokenized the way generation will produce it: as the continuation of
the prompt (`join_text`), so a BPE tokenizer's leading-space tokens match what the
policy will sample later; a conversation's target is the assistant's turn of the
chat template (`chat.sft_ids`). Prompts longer than `max_length` lose their start; targets
are never cut (an example whose target alone is too long is an error).

The training loop is the reward trainer's (`train.common.TrainLoop`): accelerate
for multi-process runs, a seeded resumable data order, atomic checkpoints, a
metrics log and a progress bar; this module gives its micro-step (`_step`) and its
logged figures (`_record`: the token-weighted mean loss).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from alignloop.chat import require_template
from alignloop.config import ConfigError
from alignloop.schema import Conversation, Prompt, SchemaError
from alignloop.train.common import (
    RunningMean,
    StepResult,
    TrainLoop,
    prepare_training,
    shard_batches,
    start_accelerator,
    start_run,
    to_device,
)
from alignloop.train.sft_config import SFTConfig

__all__ = ["SFTConfig", "load_examples", "sft_loss", "tokenize_example", "train_sft"]

IGNORE = -100  # label of a token that is not learned (cross_entropy's ignore_index)


@dataclass(frozen=True)
class Example:
    prompt_id: str
    prompt: str | Conversation  # a text, or messages for the chat template
    target: str
    where: str = "<memory>"  # the prompt's file and line


def load_examples(prompts_path: Path, completions_path: Path | None = None) -> list[Example]:
    """(prompt, target) examples: each prompt's `reference`, or every completion of
    `completions_path` joined to its prompt. Every problem names its file and line."""
    from alignloop.io import read_prompts, read_records

    prompts = read_prompts(prompts_path)
    if not prompts:
        raise SchemaError(f"{prompts_path}: no prompts")
    if completions_path is None:
        missing = [p.where for p in prompts if not (p.reference or "").strip()]
        if missing:
            raise SchemaError(
                f"{len(missing)} prompts have no 'reference' to learn from (first: "
                f"{missing[0]}); give the targets with --completions"
            )
        return [
            Example(p.id, p.prompt, p.reference, p.where)  # type: ignore[arg-type]
            for p in prompts
        ]
    by_id: dict[str, Prompt] = {p.id: p for p in prompts}
    examples = []
    for c in read_records(completions_path, "completion"):
        if c.prompt_id not in by_id:
            raise SchemaError(f"{c.where}: prompt_id {c.prompt_id!r} is not in {prompts_path}")
        if c.completion.strip():
            prompt = by_id[c.prompt_id]
            examples.append(Example(c.prompt_id, prompt.prompt, c.completion, prompt.where))
    if not examples:
        raise SchemaError(f"{completions_path}: no non-empty completions")
    return examples


def tokenize_example(
    tokenizer, prompt: str | Conversation, target: str, max_length: int
) -> tuple[list[int], int]:
    """(input ids, number of prompt tokens): prompt (with the tokenizer's special
    tokens, as generation sees it, one BOS) + target as the prompt's continuation +
    EOS (`chat.sft_ids`; a conversation through the chat template). The prompt loses
    its start when the whole is longer than `max_length`."""
    from alignloop.chat import sft_ids

    prompt_ids, target_ids = sft_ids(tokenizer, prompt, target)
    room = max_length - len(target_ids)
    if room < 1:
        raise SchemaError(
            f"a target is {len(target_ids)} tokens long, more than --max-length {max_length} "
            f"leaves for it: {target[:60]!r}"
        )
    if len(prompt_ids) > room:  # keep the end of the prompt, where the target starts
        prompt_ids = prompt_ids[len(prompt_ids) - room :]
    return prompt_ids + target_ids, len(prompt_ids)


@dataclass
class SFTBatch:
    input_ids: torch.Tensor  # (B, L) right-padded
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L) target ids, IGNORE elsewhere

    def to(self, device) -> SFTBatch:
        tensors = (self.input_ids, self.attention_mask, self.labels)
        return SFTBatch(*(to_device(t, device) for t in tensors))


def collate(rows: Sequence[tuple[list[int], int]], pad_id: int) -> SFTBatch:
    """Right-pad a batch; labels mark the target tokens (prompt and padding ignored)."""
    from alignloop.models import pad_right

    input_ids, attention_mask = pad_right([ids for ids, _ in rows], pad_id)
    labels = torch.full_like(input_ids, IGNORE)
    for i, (ids, n_prompt) in enumerate(rows):
        labels[i, n_prompt : len(ids)] = input_ids[i, n_prompt : len(ids)]
    return SFTBatch(input_ids, attention_mask, labels)


def sft_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean cross-entropy over the labelled tokens, their count). Position t's
    logits predict token t + 1."""
    logits = logits[:, :-1].float()
    labels = labels[:, 1:]
    n = (labels != IGNORE).sum()
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=IGNORE,
        reduction="sum",
    )  # fmt: skip
    return loss / n.clamp(min=1), n


def _split(examples: list[Example], fraction: float, seed: int) -> tuple[list, list]:
    """Hold out a seeded share of the prompts (all targets of a prompt on one side)."""
    ids = sorted({e.prompt_id for e in examples})
    if fraction <= 0 or len(ids) < 2:
        return examples, []
    order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
    n_held = max(1, round(fraction * len(ids)))
    held_ids = {ids[i] for i in order[:n_held]}
    return (
        [e for e in examples if e.prompt_id not in held_ids],
        [e for e in examples if e.prompt_id in held_ids],
    )


@torch.no_grad()
def held_out_loss(model, rows: list, pad_id: int, *, batch_size: int, device) -> float | None:
    """Token-weighted mean cross-entropy over the held-out examples. Every process
    runs all of them (the same forward passes on each: a DDP or FSDP model's forward
    is a collective)."""
    if not rows:
        return None
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(rows), batch_size):
        batch = collate(rows[start : start + batch_size], pad_id).to(device)
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        loss, n = sft_loss(logits, batch.labels)
        total += loss.item() * n.item()  # note: a CPU-GPU sync point (evaluation only)
        count += n.item()
    return total / max(count, 1)


def train_sft(config: SFTConfig) -> dict:
    """Fine-tune `config.model` on the examples; save it (LoRA merged) to `config.out`
    with metrics.jsonl and eval.json. Returns the final metrics."""
    accelerator, console = start_accelerator(config)
    train, held = _read_data(config)
    model, tokenizer = _load_model(config)
    require_template(tokenizer, [*train, *held], config.model)
    train_rows = [tokenize_example(tokenizer, e.prompt, e.target, config.max_length) for e in train]
    held_rows = [tokenize_example(tokenizer, e.prompt, e.target, config.max_length) for e in held]
    console.print(f"SFT of {config.model}: {len(train)} examples, {len(held)} held out")
    # torch's AdamW, not the fused `common.adamw` of the other trainers: its rounding
    # differs, and this refactor keeps SFT's figures as they were.
    model, optimizer, scheduler, total_steps = prepare_training(
        accelerator, config, model, len(train_rows), optimizer=torch.optim.AdamW
    )
    checkpoints, log, state = start_run(accelerator, config, "alignloop-sft", console)

    started = time.perf_counter()
    pad_id, device = tokenizer.pad_token_id, accelerator.device

    def evaluate() -> float | None:
        loss = held_out_loss(model, held_rows, pad_id, batch_size=32, device=device)
        if loss is not None and accelerator.num_processes > 1:
            loss = accelerator.reduce(torch.tensor(loss, device=device), "mean").item()
        return loss

    loop = TrainLoop(
        accelerator, model, optimizer, scheduler, config, checkpoints, log,
        batches=shard_batches(accelerator, config, len(train_rows)),
        step=lambda indices: _step(model, [train_rows[i] for i in indices], pad_id, device),
        record=lambda window, epoch, lr: _record(accelerator, window, epoch, lr),
        status=lambda record: f"loss {record['sft/loss']:.3f}",
        evaluate=(lambda: {"eval/loss": evaluate()}) if held_rows else None,
    )  # fmt: skip
    step = loop.run(state, total_steps, "supervised fine-tuning")
    final = {
        "eval_loss": evaluate(),
        "n_train": len(train_rows),
        "n_eval": len(held_rows),
        "steps": step,
        "seconds": round(time.perf_counter() - started, 2),
        "num_processes": accelerator.num_processes,
    }
    _save(accelerator, model, tokenizer, config, final, log, step)
    console.print(
        f"held-out loss {final['eval_loss']} on {len(held_rows)} examples; saved to {config.out}"
    )
    return final


def _read_data(config: SFTConfig) -> tuple[list[Example], list[Example]]:
    """(training, held-out) examples: every data error before the model is loaded."""
    train, held = _split(
        load_examples(config.prompts, config.completions), config.eval_fraction, config.seed
    )
    if not train:
        raise SchemaError(f"{config.prompts}: no training examples left after the split")
    return train, held


def _load_model(config: SFTConfig):
    """(model, tokenizer): the policy, seeded, with gradient checkpointing and LoRA
    adapters as configured."""
    from alignloop.models import add_lora, load_policy

    torch.manual_seed(config.seed)
    model, tokenizer = load_policy(config.model, options=config, what="--model")
    if tokenizer.eos_token_id is None:
        raise ConfigError(f"{config.model}: the tokenizer has no EOS token to end targets with")
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.lora_r > 0:
        model = add_lora(model, r=config.lora_r, alpha=config.lora_alpha,
                         dropout=config.lora_dropout)  # fmt: skip
        if config.gradient_checkpointing:
            model.enable_input_require_grads()
    return model, tokenizer


def _step(model, rows: list, pad_id: int, device) -> StepResult:
    """One micro-step's forward pass; its loss enters the logged mean by its tokens."""
    batch = collate(rows, pad_id).to(device)
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    loss, n = sft_loss(logits, batch.labels)
    return StepResult(loss, {"loss": loss}, weight=n)


def _record(accelerator, window: RunningMean, epoch: int, lr: float) -> dict:
    """The token-weighted mean loss of the window over all processes, and its tokens."""
    local = torch.stack([window.sums["loss"], window.weight]).float()  # (2,) sum, tokens
    total = accelerator.reduce(local, "sum") if accelerator.num_processes > 1 else local
    loss, tokens = torch.stack([total[0] / total[1].clamp(min=1), total[1]]).tolist()
    # (note: a CPU-GPU sync point, the one of a logged step)
    return {"sft/loss": loss, "sft/tokens": int(tokens), "sft/lr": lr, "sft/epoch": epoch}


def _save(accelerator, model, tokenizer, config: SFTConfig, final: dict, log, step: int) -> None:
    """The model (LoRA merged), eval.json and the log's last line, by the main process."""
    from alignloop.io import write_json
    from alignloop.models import save_pretrained

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(model)
        if hasattr(unwrapped, "merge_and_unload"):
            unwrapped = unwrapped.merge_and_unload()
        save_pretrained(unwrapped, tokenizer, Path(config.out))
        write_json(Path(config.out) / "eval.json", final)
        log.write({"step": step, **{f"eval/{k}": v for k, v in final.items()}})
    accelerator.wait_for_everyone()
    accelerator.end_training()


# --- command line ------------------------------------------------------------------------


if __name__ == "__main__":  # python -m alignloop.train.sft ARGS is alignloop train-sft ARGS
    from alignloop.cli import main

    sys.exit(main(["train-sft", *sys.argv[1:]]))
