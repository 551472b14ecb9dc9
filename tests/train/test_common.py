"""The trainers' shared data order (`epoch_batches`) and NaN guard (`stop_unless_finite`)."""

from __future__ import annotations

import random

import pytest
import torch

from alignloop.train.common import epoch_batches


def _padded_tokens(batches, lengths):
    return sum(max(lengths[i] for i in b) * len(b) for b in batches)


def test_every_item_once_per_epoch_and_the_order_is_seeded():
    a = epoch_batches(103, 8, seed=1, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(103))
    assert a == epoch_batches(103, 8, seed=1, epoch=0)
    assert a != epoch_batches(103, 8, seed=1, epoch=1)


def test_processes_split_each_global_batch():
    shards = [epoch_batches(50, 4, seed=0, epoch=0, rank=r, world=2) for r in range(2)]
    assert len(shards[0]) == len(shards[1])  # every process steps together
    for b0, b1 in zip(*shards, strict=True):
        assert len(b0) + len(b1) <= 8 and not set(b0) & set(b1)


def test_length_grouping_cuts_padding_and_keeps_the_order_random():
    """Lengths drawn like real pairs (20-128 tokens): grouped batches pad far less than
    shuffled ones, still hold every item once, differ between epochs, and do not come
    sorted (the batches are shuffled after grouping)."""
    rng = random.Random(0)
    lengths = [rng.randint(20, 128) for _ in range(480)]
    plain = epoch_batches(480, 8, seed=0, epoch=0)
    grouped = epoch_batches(480, 8, seed=0, epoch=0, lengths=lengths, group=50)
    assert sorted(i for b in grouped for i in b) == list(range(480))
    assert grouped != epoch_batches(480, 8, seed=0, epoch=1, lengths=lengths, group=50)
    real = sum(lengths)
    assert _padded_tokens(grouped, lengths) < 1.05 * real < _padded_tokens(plain, lengths)
    firsts = [max(lengths[i] for i in b) for b in grouped]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)
    # with two processes, the shards stay disjoint and step together
    shards = [
        epoch_batches(480, 8, seed=0, epoch=0, rank=r, world=2, lengths=lengths) for r in range(2)
    ]
    assert len(shards[0]) == len(shards[1])
    assert sorted(i for s in shards for b in s for i in b) == list(range(480))


# --- the NaN guard -----------------------------------------------------------------------

GUARD = """
import sys
from pathlib import Path

import torch

from alignloop.train import TrainingError
from alignloop.train.common import FirstNonFinite, make_accelerator, stop_unless_finite

accelerator = make_accelerator(mixed_precision="no", out=Path(sys.argv[1]))
rank = accelerator.process_index
watch = FirstNonFinite(accelerator.device)
for step in range(6):  # the last rank's loss is NaN from its 4th step on, the others' never
    bad = rank == accelerator.num_processes - 1 and step >= 3
    watch.see(torch.tensor(float("nan") if bad else 1.0), step)
try:
    stop_unless_finite(accelerator, watch.loss, watch.step, None, hint="Try a lower --lr.")
except TrainingError as e:
    print(f"rank {rank} of {accelerator.num_processes}: {e}", file=sys.stderr)
    sys.exit(3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_every_process_stops_when_one_loss_is_nan(processes, tmp_path, runs):
    """One process's NaN stops them all (one stopping alone would leave the others
    waiting in their next collective), each naming the first bad step."""
    script = tmp_path / "guard.py"
    script.write_text(GUARD)
    done = runs.run([str(tmp_path)], processes=processes, script=script, check=False)
    assert done.returncode != 0
    message = "the loss became nan at step 4; stopped. Try a lower --lr."
    for rank in range(processes):
        assert f"rank {rank} of {processes}: {message}" in done.stderr, done.stderr[-3000:]


def test_the_first_non_finite_loss_is_kept_with_its_step():
    from alignloop.train.common import FirstNonFinite

    watch = FirstNonFinite("cpu")
    for step, loss in enumerate([1.0, 2.0, float("inf"), float("nan"), 3.0]):
        watch.see(torch.tensor(loss), step)
    assert watch.loss.item() == float("inf") and watch.step.item() == 2


def test_parameters_with_their_own_lr_get_a_group_that_the_schedule_scales_alike():
    from types import SimpleNamespace

    from accelerate import Accelerator

    from alignloop.train.common import prepare_training

    model = torch.nn.Linear(3, 2)
    config = SimpleNamespace(lr=1e-3, weight_decay=0.1, scheduler="linear", warmup_ratio=0.0,
                             epochs=1, batch_size=4, grad_accum=1, max_steps=None)  # fmt: skip
    _, opt, scheduler, total = prepare_training(
        Accelerator(cpu=True), config, model, 8, own_lr={model.bias: 0.5}
    )
    main, own = opt.param_groups
    assert [p is model.weight for p in main["params"]] == [True]
    assert own["params"][0] is model.bias and own["weight_decay"] == 0.0
    assert (main["lr"], own["lr"], main["weight_decay"]) == (1e-3, 0.5, 0.1)
    opt.step()
    scheduler.step()  # linear decay over the 2 steps: both halve
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4) and total == 2
    assert opt.param_groups[1]["lr"] == pytest.approx(0.25)
