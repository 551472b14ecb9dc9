"""What every trainer shares: the accelerator, data order, checkpoints, the metrics log.

- `make_accelerator`: accelerate joins the processes (DDP, FSDP or DeepSpeed from its
  own config) and picks bf16 where the hardware has it.
- `epoch_batches`: a seeded, resumable data order, sharded across processes by hand,
  so a resumed run sees exactly the batches an uninterrupted one would.
- `Checkpoints`: every N steps the accelerator's full state (model, optimizer,
  scheduler, RNG states) plus the trainer's position, written to a temporary
  directory and renamed into place, so a run killed at any moment (SIGKILL too)
  resumes from the last complete checkpoint.
- `MetricsLog`: one JSON object per line; on resume it drops lines past the
  checkpoint, so the log of a resumed run equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from alignloop.io import atomic_write, write_json
from alignloop.train import TrainingError

__all__ = [
    "Checkpoints",
    "MetricsLog",
    "TrainingError",
    "adamw",
    "epoch_batches",
    "make_accelerator",
    "stop_unless_finite",
]


def make_accelerator(
    *, mixed_precision: str = "auto", grad_accum: int = 1, report_to: str = "none", out: Path
):
    """An `accelerate.Accelerator`; "auto" precision is bf16 where a GPU supports it."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    if mixed_precision == "auto":
        bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        mixed_precision = "bf16" if bf16 else "no"
    # accelerate joins CPU processes (gloo) only when told it runs on CPU: without
    # `cpu=True`, `torchrun --nproc_per_node 2` on a machine without a GPU starts two
    # independent single-process runs that overwrite each other's output.
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cpu = world > 1 and not torch.cuda.is_available()
    return Accelerator(
        cpu=cpu,
        # The trainers shard their batches by hand (`epoch_batches`), one optimizer
        # step per global batch. With accelerate's default (split_batches=False) a
        # prepared scheduler steps `num_processes` times per optimizer step, so N
        # processes would decay the learning rate N times too fast.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum,
        log_with=None if report_to == "none" else report_to,
        project_dir=str(out),
    )


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """torch's AdamW, fused into one kernel where torch has one for the parameters
    (floats on CPU or CUDA): on small models the per-tensor update loop otherwise
    costs a tenth of a training step (bench/profiles/)."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = (
        bool(tensors)
        and not torch.backends.mps.is_available()  # models may move there after this
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    )
    return torch.optim.AdamW(groups, fused=fused, **kwargs)


def epoch_batches(
    n: int,
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    rank: int = 0,
    world: int = 1,
    lengths: Sequence[int] | None = None,
    group: int = 50,
) -> list[list[int]]:
    """This process's batches of item indices for one epoch.

    One seeded permutation per epoch; global batches of `batch_size * world` items,
    each process taking every world-th item of each. A trailing global batch too
    small to give every process an item is dropped (DDP needs every process to
    step together).

    With `lengths`, batches hold items of similar length (little padding): each
    window of `group` global batches of the permutation is sorted by length before
    it is cut into batches, and the batches are then shuffled (seeded), so the order
    stays random while a batch's lengths are close."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n, generator=generator).tolist()
    step = batch_size * world
    if lengths is not None:
        window = step * max(group, 1)
        order = [
            i
            for start in range(0, n, window)
            for i in sorted(order[start : start + window], key=lambda i: -lengths[i])
        ]
    batches = []
    for start in range(0, n, step):
        chunk = order[start : start + step]
        if len(chunk) < world:
            break
        batches.append(chunk[rank::world])
    if lengths is not None:
        shuffled = torch.randperm(len(batches), generator=generator).tolist()
        batches = [batches[i] for i in shuffled]
    return batches


class MetricsLog:
    """Metrics as JSON lines, each with its "step"; written by the main process."""

    def __init__(self, path: Path, *, enabled: bool = True):
        self.path = path
        self.enabled = enabled

    def truncate_after(self, step: int) -> None:
        """Drop the lines logged after `step` (a resumed run logs them again), and a
        half-written last line left by a run killed while writing it."""
        if not self.enabled or not self.path.exists():
            return
        kept = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
        with atomic_write(self.path) as f:
            f.write("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                 for k, v in record.items()}  # fmt: skip
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(clean) + "\n")
            f.flush()

    def read(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_FILE = "trainer_state.json"


class Checkpoints:
    """Complete checkpoints under `root/step-NNNNNNNN`, the newest `keep` kept."""

    def __init__(self, root: Path, *, keep: int = 2):
        self.root = root
        self.keep = keep

    def complete(self) -> list[tuple[int, Path]]:
        """(step, dir) of every complete checkpoint, oldest first."""
        if not self.root.exists():
            return []
        found = []
        for d in self.root.iterdir():
            m = _STEP_DIR.match(d.name)
            if m and (d / STATE_FILE).exists():
                found.append((int(m.group(1)), d))
        return sorted(found)

    def latest(self) -> Path | None:
        found = self.complete()
        return found[-1][1] if found else None

    def save(self, accelerator, step: int, state: dict[str, Any]) -> Path:
        """Save the accelerator's state and the trainer's `state` atomically: all
        processes write into a temporary directory, which the main process renames
        into place only once everything (the state file last) is written."""
        final = self.root / f"step-{step:08d}"
        tmp = self.root / f".tmp-step-{step:08d}"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json(tmp / STATE_FILE, {"step": step, **state})
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for _, old in self.complete()[: -self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator, path: Path) -> dict[str, Any]:
        """Restore the accelerator's state from `path`; returns the trainer's state."""
        accelerator.load_state(str(path))
        return json.loads((path / STATE_FILE).read_text())


def stop_unless_finite(
    accelerator, loss: torch.Tensor, step: int, checkpoints: Checkpoints | None, *, hint: str = ""
) -> None:
    """Raise TrainingError on every process when the loss of any process is NaN or
    infinite, naming the step and the last good checkpoint to resume from (the run's
    files are left as they were); `hint` is appended to the message.

    The flag is summed over the processes: one process raising alone would leave the
    others waiting in their next collective for ever. Note: `.item()` on the flag is a
    CPU-GPU sync point."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if not bad.item():
        return
    value = loss.item() if not torch.isfinite(loss) else "non-finite on another process"
    message = f"the loss became {value} at step {step + 1}; stopped."
    if checkpoints is not None:
        last = checkpoints.latest()
        message += (f" The last good checkpoint is {last}." if last else
                    " No checkpoint was saved yet (see --save-every).")  # fmt: skip
    raise TrainingError(message + (f" {hint}" if hint else ""))


def iterate_from(batches: list[list[int]], start: int) -> Iterator[tuple[int, list[int]]]:
    """(index, batch) from batch `start` on: where a resumed epoch picks up."""
    for i in range(start, len(batches)):
        yield i, batches[i]
