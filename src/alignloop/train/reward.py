"""Reward-model training: Bradley-Terry on preference pairs.

The data arrive as pairs (prompt, chosen, rejected, margin?). Following InstructGPT
(Ouyang et al. 2022, sec. 3.5), all pairs of one prompt form one batch element and
each distinct completion is forwarded once: K ranked completions give up to C(K, 2)
pairs for the price of K forward passes, and a prompt's pairs are never spread over
many steps (which overfit in their experiments). The loss of a prompt is the mean
of its pairs' `pairwise_loss`; a batch's loss is the mean over its prompts.

    groups = group_pairs(pairs)                   # prompt -> distinct texts + pairs
    batch = collate(tokenized groups)             # RewardBatch: every text once
    rewards = model(batch.input_ids, mask)        # (N,) read at each text's last token
    loss = per-prompt mean of pairwise_loss(rewards[chosen], rewards[rejected], margin)

A decoder reads left to right, so the prompt, shared by all completions of a
prompt, is run once for all of them: `collate(pack=True)` lays out each prompt as
one block, [prompt | completion 1 | completion 2 | ...], packs the blocks into as
few rows as hold the longest, and gives a block attention mask (a completion sees
its prompt and itself) and positions that restart at each prompt. The rewards are
exactly those of the separate sequences, for about 1.5x fewer tokens on HH-RLHF
(bench/results.md). To share the prompt exactly, a prompt too long for
`max_length` loses the same tokens in all of its sequences (`same_cut`).

After training, rewards are normalized so that the training completions score mean 0
and std 1 (the gain and bias are saved in the model's config), which is what PPO
expects of its reward.
"""

from __future__ import annotations

import random
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from alignloop.chat import encode, render_text, require_template
from alignloop.io import read_comparisons
from alignloop.losses import centering_loss, pairwise_loss
from alignloop.models import pad_right, tokenize_keep_end
from alignloop.schema import Comparison, Conversation, SchemaError
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
from alignloop.train.reward_config import RewardConfig

__all__ = [
    "PromptGroup",
    "RewardBatch",
    "collate",
    "evaluate_pairs",
    "group_pairs",
    "load_pairs",
    "select_criterion",
    "train_reward_model",
]

UNSPECIFIED = "unspecified"  # the criterion of pairs that name none


# --- data ------------------------------------------------------------------------


@dataclass
class PromptGroup:
    """All pairs of one prompt, each distinct completion text once."""

    prompt: str | Conversation  # a text, or messages for the chat template
    texts: list[str | Conversation]  # distinct completions of this prompt
    pairs: list[tuple[int, int, float]] = field(default_factory=list)  # (chosen, rejected, margin)
    input_ids: list[list[int]] = field(default_factory=list)  # one per text, once tokenized
    where: str = "<memory>"  # file and line of the prompt's first pair


def group_pairs(pairs: Sequence[Comparison]) -> list[PromptGroup]:
    """Pairs grouped by prompt (its id when set, else its text), in first-seen order."""
    groups: dict[str, PromptGroup] = {}
    index: dict[str, dict[str, int]] = {}
    for p in pairs:
        key = p.prompt_id if p.prompt_id is not None else p.prompt
        group = groups.setdefault(key, PromptGroup(prompt=p.prompt, texts=[], where=p.where))
        where = index.setdefault(key, {})
        for text in (p.chosen, p.rejected):
            if text not in where:
                where[text] = len(group.texts)
                group.texts.append(text)
        group.pairs.append((where[p.chosen], where[p.rejected], p.margin or 0.0))
    return list(groups.values())


def load_pairs(path: Path, source: str = "--data") -> list[Comparison]:
    """Validated pairs of a comparisons or HH-RLHF file; errors name file and line."""
    result = read_comparisons(path)
    if result.skipped:
        warnings.warn(
            f"{path}: {len(result.skipped)} HH rows skipped, e.g. {result.skipped[0]}",
            stacklevel=2,
        )
    if not result.comparisons:
        raise SchemaError(f"{path}: {source} holds no pairs")
    return result.comparisons


def split_groups(
    groups: list[PromptGroup], fraction: float, seed: int
) -> tuple[list[PromptGroup], list[PromptGroup]]:
    """(train, held out): a seeded `fraction` of the prompts, never split across."""
    order = list(range(len(groups)))
    random.Random(seed).shuffle(order)
    n_eval = round(len(groups) * fraction)
    held = set(order[:n_eval])
    return (
        [g for i, g in enumerate(groups) if i not in held],
        [g for i, g in enumerate(groups) if i in held],
    )


def tokenize_groups(
    groups: list[PromptGroup],
    tokenizer,
    max_length: int,
    *,
    append_eos: bool = False,
    same_cut: bool = False,
) -> int:
    """Tokenize every prompt + completion in place, cutting the start of the prompt
    when too long so the completion's end, where the reward is read, stays.

    `same_cut`: when a prompt's longest sequence is too long, every sequence of that
    prompt loses the same prompt tokens (the longest then has `max_length` tokens,
    the others fewer), so all completions are read in the same context and share
    their prompt tokens exactly (what `collate(pack=True)` runs once). Without it,
    each sequence is cut to `max_length` on its own. Conversations are rendered with
    the tokenizer's chat template (`chat.render_text`), whose absence is an error
    naming the pair's file and line.
    Returns how many sequences were cut."""
    if not groups:
        return 0
    require_template(tokenizer, groups, "the reward model")
    texts = [render_text(tokenizer, g.prompt, t) for g in groups for t in g.texts]
    if not same_cut:
        rows, cut = tokenize_keep_end(tokenizer, texts, max_length, append_eos=append_eos)
        it = iter(rows)
        for g in groups:
            g.input_ids = [next(it) for _ in g.texts]
        return cut
    rows = encode(tokenizer, texts)
    if append_eos:
        rows = [[*r, tokenizer.eos_token_id] for r in rows]
    special = set(tokenizer.all_special_ids)
    it, cut = iter(rows), 0
    for g in groups:
        g_rows = [next(it) for _ in g.texts]
        lead = min(_leading(r, special) for r in g_rows)  # BOS / [CLS]: always kept
        g.input_ids, n = _cut_together(g_rows, lead, max_length)
        cut += n
    return cut


def _leading(row: list[int], special: set[int]) -> int:
    n = 0
    while n < len(row) and row[n] in special:
        n += 1
    return n


def shared_prefix_length(rows: Sequence[Sequence[int]]) -> int:
    """Tokens that every row starts with, leaving each row at least one of its own."""
    limit = min(len(r) for r in rows) - 1
    n = 0
    while n < limit and all(r[n] == rows[0][n] for r in rows):
        n += 1
    return n


def _cut_together(rows: list[list[int]], lead: int, max_length: int) -> tuple[list, int]:
    """Cut the same tokens (after the `lead` special ones) from the start of every row
    of one prompt until the longest fits; when the shared prompt is too short for
    that, each row too long is cut on its own. Returns (rows, how many lost tokens)."""
    excess = max(len(r) for r in rows) - max_length
    if excess <= 0:
        return rows, 0
    if excess <= shared_prefix_length(rows) - lead:
        return [r[:lead] + r[lead + excess :] for r in rows], len(rows)
    kept = max_length - lead
    cut = [r if len(r) <= max_length else r[:lead] + r[len(r) - kept :] for r in rows]
    return cut, sum(len(r) > max_length for r in rows)


@dataclass
class RewardBatch:
    """Several prompts' pairs, every distinct completion once. N texts; packed, R rows
    hold them all (see `collate`)."""

    input_ids: torch.Tensor  # (N, L) prompt + completion tokens, right-padded; packed (R, L)
    attention_mask: torch.Tensor  # (N, L) 1 on real tokens; packed (R, 1, L, L) bool
    chosen: torch.Tensor  # (P,) text index (0..N-1) of each pair's chosen completion
    rejected: torch.Tensor  # (P,) text index of each pair's rejected completion
    margin: torch.Tensor  # (P,) each pair's margin, 0.0 where it has none
    group: torch.Tensor  # (P,) which of the batch's prompts each pair belongs to
    n_groups: int
    position_ids: torch.Tensor | None = None  # packed: (R, L) restarting at each prompt
    read_at: torch.Tensor | None = None  # packed: (N,) flat index in (R, L) of each text's end

    def model_inputs(self) -> tuple:
        """The reward model's arguments: (input_ids, attention_mask[, positions, read_at])."""
        if self.read_at is None:
            return self.input_ids, self.attention_mask
        return self.input_ids, self.attention_mask, self.position_ids, self.read_at

    def to(self, device) -> RewardBatch:
        return RewardBatch(
            **{
                k: to_device(v, device) if isinstance(v, torch.Tensor) else v
                for k, v in self.__dict__.items()
            }  # fmt: skip
        )


def collate(groups: Sequence[PromptGroup], pad_id: int, *, pack: bool = False) -> RewardBatch:
    """One RewardBatch from tokenized groups: a right-padded row per text, or, with
    `pack` (decoders only), each prompt as one block (the tokens its texts share, then
    each text's own tokens) and the blocks packed into as few rows as hold the
    longest, with a block mask and positions that make every text's reward exactly
    what it would be alone."""
    texts: list[list[int]] = []
    chosen, rejected, margin, group = [], [], [], []
    for g_index, g in enumerate(groups):
        offset = len(texts)
        texts.extend(g.input_ids)
        for c, r, m in g.pairs:
            chosen.append(offset + c)
            rejected.append(offset + r)
            margin.append(m)
            group.append(g_index)
    pairs = {
        "chosen": torch.tensor(chosen),
        "rejected": torch.tensor(rejected),
        "margin": torch.tensor(margin, dtype=torch.float32),
        "group": torch.tensor(group),
        "n_groups": len(groups),
    }
    if not pack:
        # Widths in steps of 8: a few shapes, not one per batch (the kernels and the
        # allocator reuse their buffers; length-grouped batches would otherwise give
        # every batch its own width).
        input_ids, attention_mask = pad_right(texts, pad_id, multiple_of=8)
        return RewardBatch(input_ids=input_ids, attention_mask=attention_mask, **pairs)
    blocks = [_block(g.input_ids) for g in groups]  # (tokens, segments, positions, ends)
    rows = _fill_rows([len(b[0]) for b in blocks])  # block indices per row
    L = max(sum(len(blocks[b][0]) for b in row) for row in rows)
    input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long)  # (R, L)
    block_id = torch.full((len(rows), L), -1)  # (R, L) which block, -1: padding
    segment = torch.zeros((len(rows), L), dtype=torch.long)  # (R, L) 0 shared, i text i
    position_ids = torch.zeros((len(rows), L), dtype=torch.long)  # (R, L)
    read_at = [0] * len(texts)
    first_text = [0]  # index of each block's first text
    for b in blocks:
        first_text.append(first_text[-1] + len(b[3]))
    for r, row in enumerate(rows):
        col = 0
        for b in row:
            tokens, seg, pos, ends = blocks[b]
            span = slice(col, col + len(tokens))
            input_ids[r, span] = torch.tensor(tokens)
            block_id[r, span] = b
            segment[r, span] = torch.tensor(seg)
            position_ids[r, span] = torch.tensor(pos)
            for i, e in enumerate(ends):
                read_at[first_text[b] + i] = r * L + col + e
            col += len(tokens)
    return RewardBatch(
        input_ids=input_ids,
        attention_mask=block_mask(block_id, segment),
        position_ids=position_ids,
        read_at=torch.tensor(read_at),
        **pairs,
    )


def _block(texts: list[list[int]]) -> tuple[list[int], list[int], list[int], list[int]]:
    """One prompt's texts laid out once: the tokens they share, then each one's own.
    Returns (tokens, segment of each token: 0 shared / i for text i, positions, the
    offset of each text's last token)."""
    shared = shared_prefix_length(texts)
    tokens, seg, pos = list(texts[0][:shared]), [0] * shared, list(range(shared))
    ends = []
    for i, ids in enumerate(texts):
        own = ids[shared:]
        tokens += own
        seg += [i + 1] * len(own)
        pos += range(shared, shared + len(own))
        ends.append(len(tokens) - 1)
    return tokens, seg, pos, ends


def _fill_rows(lengths: list[int]) -> list[list[int]]:
    """Blocks into as few rows as fit the longest block (first fit, longest first):
    the padding of one row per prompt, mostly gone. Returns block indices per row."""
    capacity = max(lengths)
    rows: list[list[int]] = []
    room: list[int] = []
    for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[b] <= free:
                rows[r].append(b)
                room[r] -= lengths[b]
                break
        else:
            rows.append([b])
            room.append(capacity - lengths[b])
    return rows


def block_mask(block_id: torch.Tensor, segment: torch.Tensor) -> torch.Tensor:
    """Who sees whom in packed rows: block_id (R, L) (-1 on padding) and segment (R, L)
    (0 a prompt's shared tokens, i its text i) -> (R, 1, L, L) bool, True where query q
    may attend to key k: causal, the same block, and k shared or in q's own text. A
    padding position sees itself (an empty row would make the softmax NaN)."""
    L = block_id.shape[1]
    bq, bk = block_id[:, :, None], block_id[:, None, :]  # (R, L, 1), (R, 1, L)
    sq, sk = segment[:, :, None], segment[:, None, :]
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    allowed = causal & (bk >= 0) & (bk == bq) & ((sk == 0) | (sk == sq))  # (R, L, L)
    return (allowed | torch.eye(L, dtype=torch.bool))[:, None]


def pad_share(batch: RewardBatch, groups: Sequence[PromptGroup]) -> torch.Tensor:
    """The share of the batch's positions that are padding: () float64, no sync (the
    loop reads it where it logs). Padded rows: from the attention mask; packed rows:
    the tokens `collate` laid out (each prompt's shared tokens once, then each text's
    own) over R x L (issue 17)."""
    if batch.read_at is None:
        mask = batch.attention_mask  # (N, L)
        return 1.0 - mask.sum(dtype=torch.float64) / mask.numel()
    real = 0
    for g in groups:
        shared = shared_prefix_length(g.input_ids)
        real += shared + sum(len(ids) - shared for ids in g.input_ids)
    share = 1.0 - real / batch.input_ids.numel()  # of R x L
    return batch.input_ids.new_full((), share, dtype=torch.float64)  # a fill, no copy


# --- loss and evaluation -------------------------------------------------------------


def batch_loss(
    rewards: torch.Tensor, batch: RewardBatch, *, use_margin: bool, center_coef: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-prompt mean of the pairwise loss, averaged over prompts; rewards (N,)."""
    r_chosen, r_rejected = rewards[batch.chosen], rewards[batch.rejected]  # (P,)
    per_pair = pairwise_loss(r_chosen, r_rejected, batch.margin if use_margin else None)
    sums = torch.zeros(batch.n_groups, device=rewards.device).index_add(0, batch.group, per_pair)
    counts = torch.bincount(batch.group, minlength=batch.n_groups).clamp(min=1)
    loss = (sums / counts).mean()  # (G,) -> ()
    if center_coef:
        loss = loss + center_coef * centering_loss(rewards)
    with torch.no_grad():
        stats = {
            "loss": loss.detach(),
            "accuracy": (r_chosen > r_rejected).float().mean(),
            "margin": (r_chosen - r_rejected).mean(),
        }
    return loss, stats


@torch.no_grad()
def evaluate_pairs(model, groups: Sequence[PromptGroup], *, batch_size: int, accelerator=None):
    """Accuracy (share of pairs with r(chosen) > r(rejected)), mean margin, mean loss
    and n over `groups`, sharded across processes and summed.

    Every process runs as many forward passes as the busiest one: the forward pass of
    a DDP model broadcasts its buffers, that of an FSDP model gathers its weights, so
    a process with fewer batches (fewer held-out prompts than processes, say) would
    leave the others waiting for ever. A process short of batches runs another's
    first batch again and drops its results."""
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else torch.device("cpu")
    shards = [_eval_batches(groups[r::world], batch_size) for r in range(world)]
    rounds = max(map(len, shards))
    stand_in = next((b for shard in shards for b in shard), [])
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct, margin, loss, n
    pack = _packs(accelerator.unwrap_model(model) if accelerator else model)
    model.eval()
    for i in range(rounds):
        mine = i < len(shards[rank])
        batch = collate(shards[rank][i] if mine else stand_in, pad_id=0, pack=pack).to(device)
        rewards = model(*batch.model_inputs()).float()
        if not mine:
            continue
        diff = rewards[batch.chosen] - rewards[batch.rejected]
        totals += torch.stack([
            (diff > 0).sum(), diff.sum(), pairwise_loss(diff, torch.zeros_like(diff)).sum(),
            torch.tensor(float(len(diff)), device=device),
        ]).to(totals)  # fmt: skip
    if accelerator is not None and world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
    correct, margin, loss, n = totals.tolist()  # note: a CPU-GPU sync point
    n_int = int(n)
    return {
        "accuracy": correct / n if n else None,
        "mean_margin": margin / n if n else None,
        "loss": loss / n if n else None,
        "n": n_int,
    }


def _eval_batches(groups: Sequence[PromptGroup], batch_size: int) -> list[list[PromptGroup]]:
    """Batches of up to `batch_size` sequences, whole groups at a time, of similar
    lengths (little padding; the sums do not care about the order)."""
    ordered = sorted(groups, key=lambda g: max(map(len, g.input_ids)))
    batches: list[list[PromptGroup]] = []
    n_seq = 0
    for g in ordered:
        if not batches or n_seq + len(g.texts) > batch_size:
            batches.append([])
            n_seq = 0
        batches[-1].append(g)
        n_seq += len(g.texts)
    return batches


@torch.no_grad()
def normalization(model, groups: Sequence[PromptGroup], *, n: int, batch_size: int, device):
    """(gain, bias) that map the raw rewards of up to `n` training completions to
    mean 0 and std 1."""
    rows = [ids for g in groups for ids in g.input_ids][:n]
    rows.sort(key=len)  # batches of similar lengths: little padding (the order is moot)
    model.eval()
    rewards = []
    for start in range(0, len(rows), batch_size):
        input_ids, attention_mask = pad_right(rows[start : start + batch_size], pad_id=0)
        rewards.append(model(input_ids.to(device), attention_mask.to(device)).float().cpu())
    r = torch.cat(rewards)
    std = r.std().item() if len(r) > 1 else 1.0
    std = std if std > 1e-6 else 1.0
    return 1.0 / std, -r.mean().item() / std


def _packs(reward_model) -> bool:
    """Whether batches are packed (one row per prompt): decoders whose attention
    takes a custom 4D mask."""
    return bool(getattr(reward_model, "packs_prompts", False))


# --- training ------------------------------------------------------------------------


def select_criterion(pairs: list[Comparison], criterion: str | None, path: Path) -> list:
    """The pairs of one criterion: a file of several (helpfulness and harmlessness,
    say, whose pairs may contradict each other) is refused unless `criterion` names
    one. Pairs without a criterion form the group "unspecified"."""
    names = sorted({p.criterion or UNSPECIFIED for p in pairs})
    if criterion is None:
        if len(names) > 1:
            raise SchemaError(
                f"{path}: holds pairs of several criteria ({', '.join(names)}); "
                "choose one with --criterion"
            )
        return pairs
    chosen = [p for p in pairs if (p.criterion or UNSPECIFIED) == criterion]
    if not chosen:
        raise SchemaError(
            f"{path}: no pairs of criterion {criterion!r} (it holds {', '.join(names)})"
        )
    return chosen


def _read_data(config: RewardConfig) -> tuple[list, list]:
    """Read, validate, choose the criterion, group and split: every data error before
    the model is loaded and before anything is written."""
    criterion = config.criterion
    train = group_pairs(select_criterion(load_pairs(config.data), criterion, config.data))
    if config.eval_data is not None:
        held_pairs = load_pairs(config.eval_data, "--eval-data")
        held = group_pairs(select_criterion(held_pairs, criterion, config.eval_data))
    else:
        train, held = split_groups(train, config.eval_fraction, config.seed)
    if not train:
        raise SchemaError(f"{config.data}: no training prompts left after the held-out split")
    return train, held


def _tokenize_data(config: RewardConfig, train: list, held: list, reward_model, log) -> None:
    """Tokenize in place, saying how many sequences lost the start of their prompt."""
    tokenizer, eos = reward_model.tokenizer, reward_model.appends_eos
    same = _packs(reward_model)  # packed rows share a prompt only if cut alike
    cut = tokenize_groups(train, tokenizer, config.max_length, append_eos=eos, same_cut=same)
    cut += tokenize_groups(held, tokenizer, config.max_length, append_eos=eos, same_cut=same)
    if cut:
        log(f"[yellow]{cut} sequences longer than {config.max_length} tokens lost the "
            "start of their prompt[/yellow]")  # fmt: skip


def train_reward_model(config: RewardConfig) -> dict:
    """Train, evaluate, normalize and save a reward model in `config.out`.
    Returns the final held-out metrics (also written to `out/eval.json`)."""
    accelerator, console = start_accelerator(config)
    train, held = _read_data(config)
    reward_model = _load_model(config, train, held, console)
    model, optimizer, scheduler, total_steps = prepare_training(
        accelerator, config, reward_model, len(train)
    )
    checkpoints, log, state = start_run(accelerator, config, "alignloop-rm", console)

    pad_id, pack = reward_model.tokenizer.pad_token_id, _packs(reward_model)
    lengths = _batch_lengths(train, pack) if config.group_by_length else None
    started = time.perf_counter()

    def step(indices: list[int]) -> StepResult:
        groups = [train[i] for i in indices]
        batch = collate(groups, pad_id, pack=pack).to(accelerator.device)
        rewards = model(*batch.model_inputs()).float()
        loss, stats = batch_loss(
            rewards, batch, use_margin=config.use_margin, center_coef=config.center_coef
        )
        return StepResult(loss, {**stats, "pad_share": pad_share(batch, groups)})

    def evaluate() -> dict:
        metrics = evaluate_pairs(model, held, batch_size=config.eval_batch_size,
                                 accelerator=accelerator)  # fmt: skip
        return {f"eval/{k}": v for k, v in metrics.items()}

    loop = TrainLoop(
        accelerator, model, optimizer, scheduler, config, checkpoints, log,
        batches=shard_batches(
            accelerator, config, len(train), lengths=lengths, group=config.group_by_length
        ),
        step=step,
        record=lambda window, epoch, lr: _record(accelerator, window, epoch, lr),
        status=lambda r: f"loss {r['rm/loss']:.3f} acc {r['rm/accuracy']:.3f}",
        evaluate=evaluate if held else None,
    )  # fmt: skip
    steps = loop.run(state, total_steps, "reward model")
    train_seconds = time.perf_counter() - started  # the training loop alone
    final = _finish(config, accelerator, model, train, held, log, steps=steps, started=started)
    final["train_seconds"] = round(train_seconds, 2)  # returned only: the log stays reproducible
    console.print(
        f"held-out accuracy {final['accuracy']}, mean margin {final['mean_margin']} "
        f"on {final['n']} pairs; saved to {config.out}"
    )
    return final


def _load_model(config: RewardConfig, train: list, held: list, console):
    """The reward model (its head seeded), the data tokenized for it, LoRA and
    gradient checkpointing as configured."""
    from alignloop.models import RewardModel

    torch.manual_seed(config.seed)
    reward_model = RewardModel.from_pretrained(config.model, options=config, what="--model")
    _tokenize_data(config, train, held, reward_model, console.print)
    console.print(f"reward model: {config.model}; {len(train)} training prompts "
                  f"({sum(len(g.pairs) for g in train)} pairs), {len(held)} held out")  # fmt: skip
    reward_model.prepare_for_training(
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        gradient_checkpointing=config.gradient_checkpointing,
    )  # fmt: skip
    return reward_model


def _batch_lengths(groups: list[PromptGroup], pack: bool) -> list[int]:
    """Tokens a prompt's batch element computes: packed, its texts end to end; padded,
    its longest text times their number."""
    if pack:
        return [sum(map(len, g.input_ids)) for g in groups]
    return [max(map(len, g.input_ids)) * len(g.input_ids) for g in groups]


def _record(accelerator, window: RunningMean, epoch: int, lr: float) -> dict:
    """Mean of the running statistics over the logging window and the processes."""
    keys = list(window.sums)  # loss, accuracy, margin
    local = torch.stack([window.sums[k] / window.weight for k in keys]).float()[None]
    mean = accelerator.reduce(local, reduction="mean") if accelerator.num_processes > 1 else local
    record = dict(zip(keys, mean[0].tolist(), strict=True))  # note: a CPU-GPU sync point
    return {f"rm/{k}": v for k, v in {**record, "epoch": epoch, "lr": lr}.items()}


def _finish(config, accelerator, model, train, held, log, *, steps: int, started: float) -> dict:
    """Evaluate on the held-out pairs, normalize on the training completions, save
    the model, eval.json and the log's last line. Returns the final metrics."""
    from alignloop.io import write_json

    final = (
        evaluate_pairs(model, held, batch_size=config.eval_batch_size, accelerator=accelerator)
        if held else {"accuracy": None, "mean_margin": None, "loss": None, "n": 0}
    )  # fmt: skip
    unwrapped = accelerator.unwrap_model(model)
    gain, bias = normalization(
        unwrapped, train, n=config.norm_samples, batch_size=config.eval_batch_size,
        device=accelerator.device,
    )  # fmt: skip
    final.update(
        steps=steps, seconds=round(time.perf_counter() - started, 2), gain=gain, bias=bias,
        num_processes=accelerator.num_processes,
    )  # fmt: skip
    if accelerator.is_main_process:
        unwrapped.set_normalization(gain, bias)
        unwrapped.save_pretrained(config.out)
        write_json(Path(config.out) / "eval.json", final)
        log.write({"step": steps, **{f"eval/{k}": v for k, v in final.items()}})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
