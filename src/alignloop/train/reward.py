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
`max_length` loses the same tokens in all of its sequences (`same_cut`). An encoder
of the BERT family reads both ways, so its texts share nothing: `collate(pack="texts")`
lays them end to end, each seeing only itself, positions from 0, the head read at
each text's first token; the padding of a batch of mixed lengths goes, and no length
grouping is needed for it. `--no-pack` gives one right-padded row per text.

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
from functools import cached_property
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from alignloop.chat import encode, render_text, require_template
from alignloop.io import read_comparisons
from alignloop.losses import (
    centering_loss,
    pairwise_loss,
    user_weight_penalty,
    user_weight_spread,
)
from alignloop.models import block_mask, fill_rows, pad_right, tokenize_keep_end
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
    "Heads",
    "PersonalRewardModel",
    "PromptGroup",
    "RewardBatch",
    "collate",
    "evaluate_pairs",
    "evaluate_reward_model",
    "group_pairs",
    "load_pairs",
    "pair_columns",
    "select_criterion",
    "select_labeler",
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
    labelers: list[str | None] = field(default_factory=list)  # one per pair (or none at all)
    criteria: list[str | None] = field(default_factory=list)  # one per pair (or none at all)


def group_pairs(pairs: Sequence[Comparison]) -> list[PromptGroup]:
    """Pairs grouped by prompt (its id when set, else its text), in first-seen order;
    each pair keeps its labeler and criterion."""
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
        group.labelers.append(p.labeler)
        group.criteria.append(p.criterion)
    return list(groups.values())


@dataclass(frozen=True)
class Heads:
    """Which of the model's outputs scores each pair (issue 16), and the names that
    `collate`'s per-pair `labeler` and `criterion` indices stand for (a pair without
    one is "unspecified"; a name not listed is -1).

    read None: the model has one output (N,), every pair is read on it.
    read "criterion": output h (N, H) is criterion `criteria[h]`'s reward; each pair is
        read on its own criterion's output.
    read "labeler": output u < n_users (N, U + 1) is labeler `labelers[u]`'s reward,
        output n_users the default user's; each pair is read on its labeler's output,
        or, for a labeler not among the first n_users (not in training), the default's.
    """

    read: str | None = None
    labelers: tuple[str, ...] = ()
    criteria: tuple[str, ...] = ()
    n_users: int = 0

    @cached_property
    def labeler_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.labelers)}

    @cached_property
    def criterion_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.criteria)}

    @classmethod
    def names_of(cls, groups: Sequence[PromptGroup], **kwargs) -> Heads:
        """Heads that name every labeler and criterion of `groups` (sorted), when any
        pair names one: the names `evaluate_pairs` breaks its accuracy down by."""
        return cls(labelers=_names(groups, "labelers"), criteria=_names(groups, "criteria"),
                   **kwargs)  # fmt: skip

    def columns(self, batch: RewardBatch) -> torch.Tensor | None:
        """(P,) the output column each pair is read on; None for one output."""
        return pair_columns(batch, self.read, self.n_users)


def _names(groups: Sequence[PromptGroup], what: str) -> tuple[str, ...]:
    """The sorted names of `what` ("labelers" or "criteria") of the groups' pairs, with
    "unspecified" for pairs that name none; () when no pair names one."""
    names = {n for g in groups for n in getattr(g, what)}
    if not names - {None}:
        return ()
    return tuple(sorted({n or UNSPECIFIED for n in names}))


def pair_columns(batch: RewardBatch, read: str | None, n_users: int = 0) -> torch.Tensor | None:
    """(P,) which output of the model reads each pair (see `Heads`): its criterion's,
    its labeler's (a labeler past `n_users`, or none, the default's: `n_users`), or
    None when the model has one output."""
    if read is None:
        return None
    if read == "criterion":
        return batch.criterion
    known = (batch.labeler >= 0) & (batch.labeler < n_users)
    return torch.where(known, batch.labeler, n_users)


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
    # packed: (N,) flat index in (R, L) of each text's end (decoders) or start (encoders)
    read_at: torch.Tensor | None = None
    real_tokens: int | None = None  # packed: the tokens laid out (the rest of R x L is padding)
    labeler: torch.Tensor | None = None  # (P,) each pair's labeler, index in Heads.labelers; -1
    criterion: torch.Tensor | None = None  # (P,) each pair's criterion in Heads.criteria; -1

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


def collate(
    groups: Sequence[PromptGroup],
    pad_id: int,
    *,
    pack: bool | Literal["prompts", "texts"] = False,
    heads: Heads | None = None,
) -> RewardBatch:
    """One RewardBatch from tokenized groups: a right-padded row per text, or packed
    rows (`RewardModel.packing`) with a block mask and positions that make every
    text's reward exactly what it would be alone: `pack` "prompts" (or True; decoders),
    each prompt as one block (the tokens its texts share, then each text's own tokens,
    causal), read at each text's last token; "texts" (BERT encoders), each text its
    own block (seen both ways), read at its first token. The blocks go into as few
    rows as hold the longest. Each pair's labeler and criterion become indices into
    `heads`' names (-1 for a name not there, all -1 without `heads`)."""
    texts: list[list[int]] = []
    chosen, rejected, margin, group, labeler, criterion = [], [], [], [], [], []
    labeler_index = heads.labeler_index if heads is not None else {}
    criterion_index = heads.criterion_index if heads is not None else {}
    for g_index, g in enumerate(groups):
        offset = len(texts)
        texts.extend(g.input_ids)
        for i, (c, r, m) in enumerate(g.pairs):
            chosen.append(offset + c)
            rejected.append(offset + r)
            margin.append(m)
            group.append(g_index)
            name = g.labelers[i] if i < len(g.labelers) else None
            labeler.append(labeler_index.get(name or UNSPECIFIED, -1))
            name = g.criteria[i] if i < len(g.criteria) else None
            criterion.append(criterion_index.get(name or UNSPECIFIED, -1))
    pairs = {
        "chosen": torch.tensor(chosen),
        "rejected": torch.tensor(rejected),
        "margin": torch.tensor(margin, dtype=torch.float32),
        "group": torch.tensor(group),
        "n_groups": len(groups),
        "labeler": torch.tensor(labeler, dtype=torch.long),
        "criterion": torch.tensor(criterion, dtype=torch.long),
    }
    if not pack:
        # Widths in steps of 8: a few shapes, not one per batch (the kernels and the
        # allocator reuse their buffers; length-grouped batches would otherwise give
        # every batch its own width).
        input_ids, attention_mask = pad_right(texts, pad_id, multiple_of=8)
        return RewardBatch(input_ids=input_ids, attention_mask=attention_mask, **pairs)
    if pack == "texts":  # an encoder: no prompt shared, each text alone, its first token
        blocks = [(ids, [0] * len(ids), list(range(len(ids))), [0]) for ids in texts]
    else:
        blocks = [_block(g.input_ids) for g in groups]  # (tokens, segments, positions, ends)
    rows = fill_rows([len(b[0]) for b in blocks])  # block indices per row
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
        attention_mask=block_mask(block_id, segment, causal=pack != "texts"),
        position_ids=position_ids,
        read_at=torch.tensor(read_at),
        real_tokens=sum(len(b[0]) for b in blocks),
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


def pad_share(batch: RewardBatch) -> torch.Tensor:
    """The share of the batch's positions that are padding: () float64, no sync (the
    loop reads it where it logs). Padded rows: from the attention mask; packed rows:
    the tokens `collate` laid out (a decoder's prompt once for its texts) over R x L
    (issue 17)."""
    if batch.real_tokens is None:
        mask = batch.attention_mask  # (N, L)
        return 1.0 - mask.sum(dtype=torch.float64) / mask.numel()
    share = 1.0 - batch.real_tokens / batch.input_ids.numel()  # of R x L
    return batch.input_ids.new_full((), share, dtype=torch.float64)  # a fill, no copy


# --- loss and evaluation -------------------------------------------------------------


def batch_loss(
    rewards: torch.Tensor,
    batch: RewardBatch,
    *,
    use_margin: bool,
    center_coef: float,
    columns: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-prompt mean of the pairwise loss, averaged over prompts; rewards (N,), or
    (N, C) with `columns` (P,) the output each pair is read on (`Heads.columns`): a
    pair's loss reaches its own output only."""
    if columns is None:
        r_chosen, r_rejected = rewards[batch.chosen], rewards[batch.rejected]  # (P,)
    else:
        r_chosen = rewards[batch.chosen, columns]  # (P,)
        r_rejected = rewards[batch.rejected, columns]  # (P,)
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
def evaluate_pairs(
    model, groups: Sequence[PromptGroup], *, batch_size: int, accelerator=None,
    heads: Heads | None = None, pack: bool = True,
):  # fmt: skip
    """Accuracy (share of pairs with r(chosen) > r(rejected)), mean margin, mean loss
    and n over `groups`, sharded across processes and summed; with `by_labeler` and
    `by_criterion` ({name: {"accuracy", "n"}}) where the pairs name labelers or
    criteria. `heads`: which output reads each pair and the names (default: one
    output, the groups' names).

    Every process runs as many forward passes as the busiest one: the forward pass of
    a DDP model broadcasts its buffers, that of an FSDP model gathers its weights, so
    a process with fewer batches (fewer held-out prompts than processes, say) would
    leave the others waiting for ever. A process short of batches runs another's
    first batch again and drops its results."""
    heads = heads if heads is not None else Heads.names_of(groups)
    rank = accelerator.process_index if accelerator else 0
    world = accelerator.num_processes if accelerator else 1
    device = accelerator.device if accelerator else torch.device("cpu")
    shards = [_eval_batches(groups[r::world], batch_size) for r in range(world)]
    rounds = max(map(len, shards))
    stand_in = next((b for shard in shards for b in shard), [])
    totals = torch.zeros(4, dtype=torch.float64, device=device)  # correct, margin, loss, n
    n_lab, n_crit = len(heads.labelers), len(heads.criteria)
    by_name = torch.zeros(2, n_lab + n_crit, dtype=torch.float64, device=device)  # correct, n
    pack = _packs(accelerator.unwrap_model(model) if accelerator else model, pack)
    model.eval()
    for i in range(rounds):
        mine = i < len(shards[rank])
        batch = collate(shards[rank][i] if mine else stand_in, pad_id=0, pack=pack,
                        heads=heads).to(device)  # fmt: skip
        rewards = model(*batch.model_inputs()).float()
        if not mine:
            continue
        columns = heads.columns(batch)
        if columns is None:
            diff = rewards[batch.chosen] - rewards[batch.rejected]
        else:
            diff = rewards[batch.chosen, columns] - rewards[batch.rejected, columns]  # (P,)
        totals += torch.stack([
            (diff > 0).sum(), diff.sum(), pairwise_loss(diff, torch.zeros_like(diff)).sum(),
            torch.tensor(float(len(diff)), device=device),
        ]).to(totals)  # fmt: skip
        if n_lab + n_crit:
            by_name += _counts_by_name(diff, batch, n_lab, n_crit)
    if accelerator is not None and world > 1:
        totals = accelerator.reduce(totals, reduction="sum")
        if n_lab + n_crit:
            by_name = accelerator.reduce(by_name, reduction="sum")
    correct, margin, loss, n = totals.tolist()  # note: a CPU-GPU sync point
    n_int = int(n)
    result = {
        "accuracy": correct / n if n else None,
        "mean_margin": margin / n if n else None,
        "loss": loss / n if n else None,
        "n": n_int,
    }
    counts = by_name.tolist()
    for key, names, start in (("by_labeler", heads.labelers, 0),
                              ("by_criterion", heads.criteria, n_lab)):  # fmt: skip
        table = {}
        for j, name in enumerate(names):
            right, total = counts[0][start + j], counts[1][start + j]
            if total:
                table[name] = {"accuracy": right / total, "n": int(total)}
        if table:
            result[key] = table
    return result


def _counts_by_name(diff: torch.Tensor, batch: RewardBatch, n_lab: int, n_crit: int):
    """(2, n_lab + n_crit): pairs right and pairs, per labeler, then per criterion."""
    out = torch.zeros(2, n_lab + n_crit, dtype=torch.float64, device=diff.device)
    right = (diff > 0).double()  # (P,)
    for index, start, n in ((batch.labeler, 0, n_lab), (batch.criterion, n_lab, n_crit)):
        if n == 0:
            continue
        known = index >= 0
        column = index[known] + start
        out[0].index_add_(0, column, right[known])
        out[1].index_add_(0, column, torch.ones_like(right[known]))
    return out


class CombinedHeads(nn.Module):
    """A reward model's normalized head scores weighed by C weight vectors: forward
    gives (N, C) = (gain * raw + bias) @ weights.T over its H heads, or (N,) for one
    vector (H,). `evaluate_reward_model` reads pairs from it."""

    def __init__(self, reward_model, weights: torch.Tensor):
        super().__init__()
        self.reward_model = reward_model
        gain, bias = reward_model.normalization
        self.register_buffer("gain", torch.tensor(gain, dtype=torch.float32).reshape(-1))
        self.register_buffer("bias", torch.tensor(bias, dtype=torch.float32).reshape(-1))
        self.vector = weights.dim() == 1  # one combination: (N,) out
        self.register_buffer("weights", weights.float().reshape(-1, weights.shape[-1]))  # (C, H)

    @property
    def packing(self) -> Literal["prompts", "texts"] | None:
        return self.reward_model.packing

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        raw = self.reward_model(*inputs).float()  # (N,) or (N, H), the training scale
        scores = raw.reshape(len(raw), -1) * self.gain + self.bias  # (N, H) normalized
        out = scores @ self.weights.T  # (N, C)
        return out[:, 0] if self.vector else out


def evaluate_reward_model(
    model, groups: Sequence[PromptGroup], *, batch_size: int, weights=None, where="--data"
) -> dict:
    """`alignloop eval-rm`: `evaluate_pairs` of a loaded reward model, its margins on
    the scale `alignloop score` gives. One head: as ever. Several: with `weights`
    (head -> weight) every pair on that combination; without, each pair on its own
    head: a criteria model's pair on its criterion's (a criterion without a head is a
    SchemaError naming `where`), a personal model's with its labeler's weights (a
    labeler it has not seen, or none: the default weights, said in
    "unseen_labelers")."""
    if model.n_heads == 1 and weights is None:
        result = evaluate_pairs(model, groups, batch_size=batch_size)
        if result["mean_margin"] is not None:  # on the scale `score` gives (the bias cancels)
            result["mean_margin"] *= model.normalization[0]
        result["scale"] = (
            "mean_margin: normalized rewards, as `alignloop score` gives them; loss: raw"
        )
        return result
    names = Heads.names_of(groups)
    users = model.users
    if weights is not None or model.n_heads == 1:
        module, heads = CombinedHeads(model, model.weight_vector(weights)), names
    elif users:
        known = tuple(users)
        others = tuple(n for n in names.labelers if n not in users)
        matrix = torch.tensor([*users.values(), model.weight_vector(None).tolist()])  # (U+1, D)
        module = CombinedHeads(model, matrix)
        heads = Heads(read="labeler", labelers=known + others, criteria=names.criteria,
                      n_users=len(known))  # fmt: skip
    else:
        missing = [c for c in names.criteria or (UNSPECIFIED,) if c not in model.head_names]
        if missing:
            raise SchemaError(
                f"{where}: pairs of criterion {missing[0]!r}, which the reward model has no "
                f"head for (its heads: {', '.join(model.head_names)}); weigh the heads with "
                "--reward NAME=W to read every pair on one combination"
            )
        module = CombinedHeads(model, torch.eye(model.n_heads))
        heads = Heads(read="criterion", labelers=names.labelers,
                      criteria=tuple(model.head_names))  # fmt: skip
    result = evaluate_pairs(module, groups, batch_size=batch_size, heads=heads)
    if heads.read == "labeler":
        unseen = [n for n in result.get("by_labeler", {}) if n not in users]
        if unseen:
            result["unseen_labelers"] = {
                "names": unseen, "weights": "default: the mean of the training labelers' weights",
            }  # fmt: skip
    result["read"] = {
        None: "every pair on one combination of the heads (weights)",
        "labeler": "each pair with its own labeler's weights",
        "criterion": "each pair on its own criterion's head",
    }[heads.read]
    if heads.read is None:
        result["weights"] = weights if weights is not None else model.default_weights
    result["scale"] = (
        "mean_margin and loss: normalized head scores, as `alignloop score` gives them"
    )
    return result


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
    mean 0 and std 1; for a model of H outputs, H gains and H biases (lists), head
    by head."""
    return gain_and_bias(raw_rewards(model, groups, n=n, batch_size=batch_size, device=device))


@torch.no_grad()
def raw_rewards(model, groups: Sequence[PromptGroup], *, n: int, batch_size: int, device):
    """The model's raw rewards of up to `n` training completions, on the CPU: (M,) or
    (M, H), in an order of their own (by length)."""
    rows = [ids for g in groups for ids in g.input_ids][:n]
    rows.sort(key=len)  # batches of similar lengths: little padding (the order is moot)
    model.eval()
    rewards = []
    for start in range(0, len(rows), batch_size):
        input_ids, attention_mask = pad_right(rows[start : start + batch_size], pad_id=0)
        rewards.append(model(input_ids.to(device), attention_mask.to(device)).float().cpu())
    return torch.cat(rewards)


def gain_and_bias(r: torch.Tensor):
    """(gain, bias) taking rewards r (M,) to mean 0 and std 1: floats; for r (M, H),
    a list of H gains and one of H biases, column by column."""
    if r.dim() == 2:
        pairs = [gain_and_bias(r[:, h]) for h in range(r.shape[1])]
        return [g for g, _ in pairs], [b for _, b in pairs]
    std = r.std().item() if len(r) > 1 else 1.0
    std = std if std > 1e-6 else 1.0
    return 1.0 / std, -r.mean().item() / std


def _packs(reward_model, allowed: bool = True) -> Literal["prompts", "texts"] | None:
    """How batches are packed (`RewardModel.packing`: decoders by prompt, BERT
    encoders by text), None where they are not or `allowed` (--pack) is off."""
    return getattr(reward_model, "packing", None) if allowed else None


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


def select_labeler(pairs: list[Comparison], labeler: str, path: Path) -> list:
    """The pairs of one labeler (`--labeler`: a reward model of that labeler alone)."""
    chosen = [p for p in pairs if p.labeler == labeler]
    if not chosen:
        names = sorted({p.labeler for p in pairs if p.labeler is not None})
        holds = f"it holds pairs of {', '.join(names[:8])}" if names else "its pairs name none"
        more = f", ... ({len(names)} labelers)" if len(names) > 8 else ""
        raise SchemaError(f"{path}: no pairs of labeler {labeler!r} ({holds}{more})")
    return chosen


def _select(pairs: list[Comparison], config: RewardConfig, path: Path) -> list:
    """The pairs of a file that train (or evaluate) the model `config` asks for: one
    labeler's with --labeler; one criterion's unless --heads criteria."""
    if config.labeler is not None:
        pairs = select_labeler(pairs, config.labeler, path)
    if config.heads == "criteria":
        return pairs  # every criterion: a head each
    return select_criterion(pairs, config.criterion, path)


def _check_heads_data(config: RewardConfig, train_pairs: list, held_pairs: list) -> None:
    """What --heads criteria and personal need of the pairs, each failure one line naming
    the file (and line): criteria, two criteria or more in --data and no held-out pair
    of a criterion it lacks (no head would read it); personal, a labeler on every
    training pair."""
    if config.heads == "criteria":
        names = sorted({p.criterion or UNSPECIFIED for p in train_pairs})
        if len(names) < 2:
            raise SchemaError(
                f"{config.data}: --heads criteria: its pairs are of one criterion only "
                f"({names[0]}); train with --heads one"
            )
        for p in held_pairs:
            if (p.criterion or UNSPECIFIED) not in names:
                raise SchemaError(
                    f"{p.where}: criterion {p.criterion or UNSPECIFIED!r}: --data has no pairs "
                    f"of it, so no head reads it (the heads: {', '.join(names)})"
                )
    if config.heads == "personal":
        for p in train_pairs:
            if p.labeler is None:
                raise SchemaError(
                    f"{p.where}: field 'labeler': --heads personal learns each labeler's "
                    "weights, and this pair names no labeler"
                )


def _read_data(config: RewardConfig) -> tuple[list, list]:
    """Read, validate, choose the criterion (and labeler), group and split: every data
    error before the model is loaded and before anything is written."""
    train_pairs = _select(load_pairs(config.data), config, config.data)
    held_pairs: list[Comparison] = []
    if config.eval_data is not None:
        held_pairs = _select(load_pairs(config.eval_data, "--eval-data"), config,
                             config.eval_data)  # fmt: skip
    _check_heads_data(config, train_pairs, held_pairs)
    train = group_pairs(train_pairs)
    if config.eval_data is not None:
        held = group_pairs(held_pairs)
    else:
        train, held = split_groups(train, config.eval_fraction, config.seed)
    if not train:
        raise SchemaError(f"{config.data}: no training prompts left after the held-out split")
    return train, held


def heads_for(config: RewardConfig, train: list[PromptGroup], held: list[PromptGroup]) -> Heads:
    """The outputs `config.heads` trains and which reads each pair: one; one per
    criterion of the training pairs (sorted); or, personal, the training labelers
    (sorted) then the held-out pairs' other labelers (read with the default weights)."""
    names = Heads.names_of([*train, *held])
    if config.heads == "criteria":
        return Heads(read="criterion", labelers=names.labelers, criteria=_names(train, "criteria"))
    if config.heads == "personal":
        users = _names(train, "labelers")
        others = tuple(n for n in names.labelers if n not in users)
        return Heads(read="labeler", labelers=users + others, criteria=names.criteria,
                     n_users=len(users))  # fmt: skip
    return names


class PersonalRewardModel(nn.Module):
    """A reward model of D features and the weights of the U labelers it learns from
    (reward factorization: Shenfeld et al. 2025, "Language Model Personalization via
    Reward Factorization"; Barreto et al. 2025, "Capturing Individual Human Preferences
    with Reward Features"), one module, so that the accelerator prepares (DDP),
    clips, checkpoints and resumes them together.

    forward: (N, U + 1), each text's reward for each labeler, w_u . f(text), and in
    the last column for the default user, whose weights are the mean of the U."""

    def __init__(self, reward_model, n_users: int, *, seed: int = 0):
        super().__init__()
        self.reward_model = reward_model
        D = reward_model.n_heads
        generator = torch.Generator().manual_seed(seed)
        # Random, not equal: labelers who start apart pull the features apart (equal
        # weights would make every labeler's first gradient on the features the same).
        init = torch.randn(n_users, D, generator=generator) / D**0.5
        self.labeler_weights = nn.Parameter(init)  # (U, D)
        # The default user's weights (D,) once fixed (`_finish`: the mean of the saved,
        # rescaled users); None: the mean of the labelers' weights as they train.
        self.default_weights: torch.Tensor | None = None

    @property
    def packing(self) -> Literal["prompts", "texts"] | None:
        return self.reward_model.packing

    def all_weights(self) -> torch.Tensor:
        """(U + 1, D): the labelers' weights, then the default user's (their mean)."""
        w = self.labeler_weights
        default = w.mean(0) if self.default_weights is None else self.default_weights.to(w)
        return torch.cat([w, default[None]])

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        features = self.reward_model(*inputs)  # (N, D) raw features
        return features @ self.all_weights().to(features.dtype).T  # (N, U + 1)


def _tokenize_data(config: RewardConfig, train: list, held: list, reward_model, log) -> None:
    """Tokenize in place, saying how many sequences lost the start of their prompt."""
    tokenizer, eos = reward_model.tokenizer, reward_model.appends_eos
    # packed rows share a prompt only if cut alike
    same = _packs(reward_model, config.pack) == "prompts"
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
    heads = heads_for(config, train, held)
    reward_model = _load_model(config, train, held, console, heads)
    module, user_weights = reward_model, None
    if config.heads == "personal":
        module = PersonalRewardModel(reward_model, heads.n_users, seed=config.seed)
        user_weights = module.labeler_weights  # (U, D), the same parameter once prepared
    own_lr = {user_weights: config.personal_lr} if user_weights is not None else None
    model, optimizer, scheduler, total_steps = prepare_training(
        accelerator, config, module, len(train), own_lr=own_lr
    )
    checkpoints, log, state = start_run(accelerator, config, "alignloop-rm", console)

    pad_id, pack = reward_model.tokenizer.pad_token_id, _packs(reward_model, config.pack)
    window = grouping_window(config, pack)
    lengths = _batch_lengths(train, pack) if window else None
    started = time.perf_counter()

    def step(indices: list[int]) -> StepResult:
        groups = [train[i] for i in indices]
        batch = collate(groups, pad_id, pack=pack, heads=heads).to(accelerator.device)
        loss, stats = step_loss(model, batch, heads, config, user_weights=user_weights)
        return StepResult(loss, {**stats, "pad_share": pad_share(batch)})

    def evaluate() -> dict:
        metrics = evaluate_pairs(
            model, held, batch_size=config.eval_batch_size, accelerator=accelerator,
            heads=heads, pack=config.pack,
        )  # fmt: skip
        return _flat("eval/", metrics)

    loop = TrainLoop(
        accelerator, model, optimizer, scheduler, config, checkpoints, log,
        batches=shard_batches(
            accelerator, config, len(train), lengths=lengths, group=window
        ),
        step=step,
        record=lambda window, epoch, lr: _record(accelerator, window, epoch, lr),
        status=lambda r: f"loss {r['rm/loss']:.3f} acc {r['rm/accuracy']:.3f}",
        evaluate=evaluate if held else None,
    )  # fmt: skip
    steps = loop.run(state, total_steps, "reward model")
    train_seconds = time.perf_counter() - started  # the training loop alone
    final = _finish(config, accelerator, model, train, held, log, steps=steps, started=started,
                    heads=heads)  # fmt: skip
    final["train_seconds"] = round(train_seconds, 2)  # returned only: the log stays reproducible
    console.print(
        f"held-out accuracy {final['accuracy']}, mean margin {final['mean_margin']} "
        f"on {final['n']} pairs; saved to {config.out}"
    )
    return final


def step_loss(
    model, batch: RewardBatch, heads: Heads, config: RewardConfig, *, user_weights=None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One micro-step's loss and figures: each pair's Bradley-Terry loss on the output
    that reads it (`Heads.columns`), per prompt, and for a personal model
    `personal_l2` times the mean squared norm of the labelers' weights (U, D) and
    `personal_shrink` times their mean squared distance from the mean labeler's."""
    rewards = model(*batch.model_inputs()).float()  # (N,) or (N, C)
    loss, stats = batch_loss(
        rewards, batch, use_margin=config.use_margin, center_coef=config.center_coef,
        columns=heads.columns(batch),
    )  # fmt: skip
    if user_weights is not None and config.personal_l2:
        loss = loss + config.personal_l2 * user_weight_penalty(user_weights)
    if user_weights is not None and config.personal_shrink:
        loss = loss + config.personal_shrink * user_weight_spread(user_weights)
    return loss, stats


def _flat(prefix: str, metrics: dict) -> dict:
    """{prefix + key: value}, a nested table's entries as prefix/key/name/field (the
    log holds figures, one per key)."""
    flat = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            flat.update(_flat(f"{prefix}{k}/", v))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _load_model(config: RewardConfig, train: list, held: list, console, heads: Heads):
    """The reward model (its head seeded; H heads: one per criterion, or the D
    features), the data tokenized for it, LoRA and gradient checkpointing as
    configured."""
    from alignloop.models import RewardModel

    names = None
    if config.heads == "criteria":
        names = list(heads.criteria)
    elif config.heads == "personal":
        names = [f"feature_{i}" for i in range(config.features)]
    torch.manual_seed(config.seed)
    reward_model = RewardModel.from_pretrained(config.model, options=config, what="--model",
                                               heads=names)  # fmt: skip
    _tokenize_data(config, train, held, reward_model, console.print)
    console.print(f"reward model: {config.model}; {len(train)} training prompts "
                  f"({sum(len(g.pairs) for g in train)} pairs), {len(held)} held out")  # fmt: skip
    if names is not None:
        who = f"{heads.n_users} labelers' weights over " if config.heads == "personal" else ""
        console.print(f"heads: {who}{', '.join(names)}")
    reward_model.prepare_for_training(
        lora_r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        gradient_checkpointing=config.gradient_checkpointing,
    )  # fmt: skip
    return reward_model


def grouping_window(config: RewardConfig, pack: str | None) -> int:
    """Batches sorted by length over windows of this many (0: plain random batches):
    --group-by-length, or by default none where the batches are packed (packing leaves
    little padding, and grouping would only cost accuracy: about 2 points on held-out
    MiniLM folds, bench/rm_folds.md) and 50 where they are padded (one row per text)."""
    if config.group_by_length is not None:
        return config.group_by_length
    return 0 if pack else 50


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


def personal_record(
    features: torch.Tensor, user_weights: torch.Tensor, gain: list[float], users: Sequence[str]
) -> dict:
    """A personal model's `alignloop_personal` record: each user's weights expressed
    against the normalized features (gain_d * f_d + bias_d, what `head_scores` gives)
    and scaled so that their reward has std 1 on the training completions (a positive
    scale: their preferences do not change), and the default user, their mean.

    features (M, D) raw, user_weights (U, D) over the raw features, gain (D,). On the
    normalized features w_u . f = (w_u / gain) . f_norm + a constant."""
    rewards = features.double() @ user_weights.double().T  # (M, U)
    std = rewards.std(0) if len(features) > 1 else torch.ones(len(users), dtype=torch.float64)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # (U,)
    v = user_weights.double() / torch.tensor(gain, dtype=torch.float64) / std[:, None]  # (U, D)
    return {"users": dict(zip(users, v.tolist(), strict=True)), "default": v.mean(0).tolist()}


def _finish(config, accelerator, model, train, held, log, *, steps: int, started: float,
            heads: Heads | None = None) -> dict:  # fmt: skip
    """Evaluate on the held-out pairs, normalize on the training completions (head by
    head), save the model (a personal model's users in its config), eval.json and
    the log's last line. Returns the final metrics."""
    from alignloop.io import write_json
    from alignloop.models import PERSONAL_KEY

    heads = heads if heads is not None else Heads()
    unwrapped = accelerator.unwrap_model(model)
    personal = isinstance(unwrapped, PersonalRewardModel)
    reward_model = unwrapped.reward_model if personal else unwrapped

    def normalize() -> tuple:  # the raw rewards of training completions, (gain, bias)
        raw = raw_rewards(reward_model, train, n=config.norm_samples,
                          batch_size=config.eval_batch_size, device=accelerator.device)  # fmt: skip
        return raw, *gain_and_bias(raw)

    record, users = None, heads.labelers[: heads.n_users]
    if personal:  # first: the saved default user reads the held-out labelers not in training
        raw, gain, bias = normalize()
        record = personal_record(raw, unwrapped.labeler_weights.detach().float().cpu(), gain, users)
        unwrapped.default_weights = torch.tensor(record["default"]) * torch.tensor(gain)  # raw
    final = (
        evaluate_pairs(model, held, batch_size=config.eval_batch_size, accelerator=accelerator,
                       heads=heads, pack=config.pack)  # fmt: skip
        if held else {"accuracy": None, "mean_margin": None, "loss": None, "n": 0}
    )  # fmt: skip
    if not personal:
        _, gain, bias = normalize()
    unseen = [n for n in final.get("by_labeler", {}) if n not in users] if personal else []
    if unseen:
        final["unseen_labelers"] = {
            "names": unseen, "weights": "default: the mean of the training labelers' weights",
        }  # fmt: skip
    final.update(
        steps=steps, seconds=round(time.perf_counter() - started, 2), gain=gain, bias=bias,
        num_processes=accelerator.num_processes,
    )  # fmt: skip
    if reward_model.n_heads > 1:
        final["heads"] = reward_model.head_names
    if accelerator.is_main_process:
        reward_model.set_normalization(gain, bias)
        if record is not None:
            setattr(reward_model.hf_model.config, PERSONAL_KEY, record)
        reward_model.save_pretrained(config.out)
        write_json(Path(config.out) / "eval.json", final)
        log.write({"step": steps, **_flat("eval/", final)})
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return final
