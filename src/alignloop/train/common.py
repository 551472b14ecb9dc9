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
- `stop_unless_finite`: every process stops together when any one's loss is NaN or
  infinite, naming the step and the last good checkpoint.
- `TrainLoop`: the optimizer-step loop of the SFT and reward trainers (accumulate,
  clip, step, log, evaluate, checkpoint); it waits for the device only where it
  logs a figure, evaluates or saves.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from alignloop.io import atomic_write, write_json
from alignloop.progress import progress
from alignloop.train import TrainingError

__all__ = [
    "Checkpoints",
    "FirstNonFinite",
    "MetricsLog",
    "RunningMean",
    "StepResult",
    "TrainLoop",
    "TrainingError",
    "adamw",
    "count_steps",
    "epoch_batches",
    "make_accelerator",
    "make_scheduler",
    "prepare_training",
    "shard_batches",
    "start_accelerator",
    "start_run",
    "stop_unless_finite",
    "to_device",
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


def to_device(t: torch.Tensor, device) -> torch.Tensor:
    """`t` on `device` without waiting for the device: a CPU tensor goes to a GPU from
    pinned memory, queued behind the running kernels (as nanoGPT's `get_batch` does);
    a copy from ordinary memory would be a CPU-GPU sync point at every batch."""
    if torch.device(device).type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


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
    accelerator,
    loss: torch.Tensor,
    step: int | torch.Tensor,
    checkpoints: Checkpoints | None,
    *,
    hint: str = "",
) -> None:
    """Raise TrainingError on every process when the loss of any process is NaN or
    infinite, naming the step it became so at and the last good checkpoint to resume
    from (the run's files are left as they were); `hint` is appended to the message.

    `step` counts the optimizer steps done when `loss` was computed; it may be a tensor
    on the device, as `FirstNonFinite` keeps it. The flag is summed over the
    processes: one process raising alone would leave the others waiting in their next
    collective for ever."""
    bad = (~torch.isfinite(loss.detach())).float().reshape(1)
    if accelerator.num_processes > 1:
        bad = accelerator.reduce(bad, reduction="sum")
    if not bad.item():  # note: a CPU-GPU sync point
        return
    # Every process is here: name the earliest step at which a process saw a bad loss.
    losses = loss.detach().float().reshape(1)
    steps = torch.as_tensor(step, device=losses.device).long().reshape(1)
    if accelerator.num_processes > 1:
        losses, steps = accelerator.gather(losses), accelerator.gather(steps)
    first, value = min(
        (s, v) for s, v in zip(steps.tolist(), losses.tolist(), strict=True) if not math.isfinite(v)
    )
    message = f"the loss became {value} at step {first + 1}; stopped."
    if checkpoints is not None:
        last = checkpoints.latest()
        message += (f" The last good checkpoint is {last}." if last else
                    " No checkpoint was saved yet (see --save-every).")  # fmt: skip
    raise TrainingError(message + (f" {hint}" if hint else ""))


class FirstNonFinite:
    """The first NaN or infinite loss of this process and the step it came at, kept
    on the device: a loop records every micro-step's loss without waiting for the
    device and checks only where it syncs anyway (`stop_unless_finite(accelerator,
    watch.loss, watch.step, ...)`), still naming the exact step."""

    def __init__(self, device):
        self.loss = torch.zeros((), device=device)  # 0 while every loss was finite
        self.step = torch.zeros((), dtype=torch.long, device=device)

    def see(self, loss: torch.Tensor, step: int) -> None:
        new = torch.isfinite(self.loss) & ~torch.isfinite(loss.detach())  # () bool
        self.loss = torch.where(new, loss.detach().float(), self.loss)
        self.step = torch.where(new, step, self.step)


# --- the training loop of the SFT and reward trainers ----------------------------------


def count_steps(n_items: int, config, world: int) -> int:
    """Optimizer steps in all: `config.epochs` passes over `n_items` in global batches
    of `config.batch_size` per process, `config.grad_accum` batches a step, at most
    `config.max_steps`, at least 1."""
    per_epoch = len(epoch_batches(n_items, config.batch_size, seed=0, epoch=0, world=world))
    steps = math.ceil(per_epoch * config.epochs / config.grad_accum)
    if config.max_steps is not None:
        steps = min(steps, config.max_steps)
    return max(steps, 1)


def make_scheduler(config, optimizer, total_steps: int):
    """`config.scheduler` (linear, cosine, constant) with `config.warmup_ratio` of the
    steps warming up; prepare it with the accelerator, which steps it once per
    optimizer step (not per micro-step, not per process: `make_accelerator`)."""
    from transformers import get_scheduler

    warmup = math.ceil(config.warmup_ratio * total_steps)
    return get_scheduler(config.scheduler, optimizer, warmup, total_steps)


def start_accelerator(config) -> tuple[Any, Any]:
    """The accelerator `config` asks for (mixed precision, gradient accumulation, the
    tracker, `config.out`) and a rich console on stderr that only the main process
    prints to: (accelerator, console)."""
    from rich.console import Console

    accelerator = make_accelerator(
        mixed_precision=config.mixed_precision,
        grad_accum=config.grad_accum,
        report_to=config.report_to,
        out=Path(config.out),
    )
    return accelerator, Console(stderr=True, quiet=not accelerator.is_main_process)


def prepare_training(
    accelerator,
    config,
    model,
    n_items: int,
    *,
    optimizer: Callable[..., Any] = adamw,
    own_lr: Mapping[torch.nn.Parameter, float] | None = None,
) -> tuple[Any, ...]:
    """`optimizer` (AdamW: `adamw`, or torch's) over the model's trainable parameters
    at `config.lr` and `config.weight_decay` (those of `own_lr` at their own learning
    rate, without weight decay, in a group of their own that the schedule scales
    alike); the optimizer steps in all (`count_steps` over `n_items`) and the scheduler
    over them; the model, optimizer and scheduler prepared together, so that the
    scheduler steps once per optimizer step. Returns (model, optimizer, scheduler,
    total_steps)."""
    own_lr = own_lr or {}
    trainable = [p for p in model.parameters() if p.requires_grad and p not in own_lr]
    groups = [{"params": trainable}]
    groups += [{"params": [p], "lr": lr, "weight_decay": 0.0} for p, lr in own_lr.items()]
    opt = optimizer(groups, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = count_steps(n_items, config, accelerator.num_processes)
    scheduler = make_scheduler(config, opt, total_steps)
    model, opt, scheduler = accelerator.prepare(model, opt, scheduler)
    return model, opt, scheduler, total_steps


def shard_batches(
    accelerator, config, n_items: int, *, lengths: Sequence[int] | None = None, group: int = 50
) -> Callable[[int], list[list[int]]]:
    """`TrainLoop.batches`: for an epoch, this process's `epoch_batches` of `n_items`
    (`config.batch_size` a process, seeded by `config.seed`; by length with `lengths`)."""
    return lambda epoch: epoch_batches(
        n_items, config.batch_size, seed=config.seed, epoch=epoch,
        rank=accelerator.process_index, world=accelerator.num_processes,
        lengths=lengths, group=group,
    )  # fmt: skip


def start_run(accelerator, config, project: str, console) -> tuple[Checkpoints, MetricsLog, dict]:
    """The trackers, `config.out`, its checkpoints and metrics log. With
    `config.resume` and a complete checkpoint, the accelerator's state is restored
    from it and the log cut back to its step; else a fresh log. Returns (checkpoints,
    log, the position to start from: {"step", "epoch", "batch"})."""
    if config.report_to != "none":
        accelerator.init_trackers(project, config={k: str(v) for k, v in vars(config).items()})
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Checkpoints(out / "checkpoints", keep=config.keep_checkpoints)
    log = MetricsLog(out / "metrics.jsonl", enabled=accelerator.is_main_process)
    state = {"step": 0, "epoch": 0, "batch": 0}
    if config.resume and (latest := checkpoints.latest()) is not None:
        state = checkpoints.load(accelerator, latest)
        console.print(f"resumed from {latest} (step {state['step']})")
    elif accelerator.is_main_process and log.path.exists():
        log.path.unlink()  # a fresh run starts a fresh log
    log.truncate_after(state["step"])
    return checkpoints, log, state


@dataclass
class StepResult:
    """What a trainer's micro-step gives the loop."""

    loss: torch.Tensor  # () what is backpropagated
    stats: dict[str, torch.Tensor]  # () each: figures averaged over the logging window
    weight: torch.Tensor | float = 1.0  # () this micro-step's weight in that average


class RunningMean:
    """Weighted sums of the micro-steps' figures since the last logged step, kept on
    the device in float64 (float32 on MPS, which has no float64): adding does not wait
    for the device; the trainer's `record` reads them where a step is logged."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.weight: torch.Tensor | float = 0.0

    def add(self, result: StepResult) -> None:
        w = result.weight
        for k, v in result.stats.items():
            wide = _wide(v.detach())
            if isinstance(w, torch.Tensor):
                wide = wide * _wide(w)
            self.sums[k] = self.sums[k] + wide if k in self.sums else wide
        self.weight = self.weight + (_wide(w) if isinstance(w, torch.Tensor) else w)


def _wide(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32 if t.device.type == "mps" else torch.float64)


@dataclass
class TrainLoop:
    """The loop the SFT and reward trainers share: epochs of seeded batches from a
    checkpoint's position on; per micro-step a forward and backward pass under
    gradient accumulation; per optimizer step clipping, one optimizer and one
    scheduler step; then, every so many steps, the logged figures, the held-out
    evaluation and a checkpoint. The running figures are flushed at every checkpoint
    too, so a resumed run (which starts with an empty window) logs the same lines.

    The trainer gives what differs:
        batches(epoch)              this process's batches of item indices
        step(indices)               one micro-step's StepResult (the forward pass)
        record(window, epoch, lr)   the logged figures of a RunningMean, reduced over
                                    the processes (the loop's sync point)
        status(record)              the progress bar's text
        evaluate()                  held-out figures, or None without held-out data
    """

    accelerator: Any
    model: Any
    optimizer: Any
    scheduler: Any  # prepared: it steps with the optimizer, once per optimizer step
    config: Any  # epochs, log_every, eval_every, save_every, max_grad_norm, report_to
    checkpoints: Checkpoints
    log: MetricsLog
    batches: Callable[[int], list[list[int]]]
    step: Callable[[list[int]], StepResult]
    record: Callable[[RunningMean, int, float], dict[str, Any]]
    status: Callable[[dict[str, Any]], str]
    evaluate: Callable[[], dict[str, Any]] | None = None

    def run(self, state: dict, total_steps: int, description: str) -> int:
        """Train from `state` (see `start_run`) to `total_steps` or the last epoch's
        end; returns the optimizer steps done."""
        step, window = state["step"], RunningMean()
        watch = FirstNonFinite(self.accelerator.device)
        bar, task = progress(total_steps, description, enabled=self.accelerator.is_main_process)
        bar.update(task, completed=step)
        with bar:
            for epoch in range(state["epoch"], self.config.epochs):
                batches = self.batches(epoch)
                start = state["batch"] if epoch == state["epoch"] else 0
                for b_index, indices in iterate_from(batches, start):
                    if step >= total_steps:
                        break
                    result = self._micro_step(indices)
                    watch.see(result.loss, step)
                    window.add(result)
                    if not self.accelerator.sync_gradients:
                        continue
                    step += 1
                    position = {"epoch": epoch, "batch": b_index + 1}
                    if b_index + 1 == len(batches):
                        position = {"epoch": epoch + 1, "batch": 0}
                    record = self._after_step(step, total_steps, epoch, position, window, watch)
                    if record is not None:
                        bar.update(task, status=self.status(record))
                        window = RunningMean()
                    bar.update(task, completed=step)
                if step >= total_steps:
                    break
        stop_unless_finite(self.accelerator, watch.loss, watch.step, self.checkpoints)
        return step

    def _micro_step(self, indices: list[int]) -> StepResult:
        accelerator = self.accelerator
        self.model.train()
        with accelerator.accumulate(self.model):
            result = self.step(indices)
            accelerator.backward(result.loss)
            if accelerator.sync_gradients and self.config.max_grad_norm > 0:
                accelerator.clip_grad_norm_(self.model.parameters(), self.config.max_grad_norm)
            self.optimizer.step()  # the prepared optimizer and scheduler skip the
            self.scheduler.step()  # micro-steps that only accumulate
            self.optimizer.zero_grad()
        return result

    def _after_step(self, step, total_steps, epoch, position, window, watch) -> dict | None:
        """Log, evaluate and checkpoint where due; returns the logged record, if any."""
        config = self.config
        saving = bool(config.save_every) and step % config.save_every == 0
        evaluating = bool(config.eval_every) and step % config.eval_every == 0
        evaluating = evaluating and self.evaluate is not None
        logging = step % config.log_every == 0 or step == total_steps or saving
        if logging or evaluating:  # never log, evaluate or save a model gone NaN
            stop_unless_finite(self.accelerator, watch.loss, watch.step, self.checkpoints)
        record = None
        if logging:
            record = self.record(window, epoch, self.scheduler.get_last_lr()[0])
            self.log.write({"step": step, **record})
            if config.report_to != "none":
                self.accelerator.log(record, step=step)
        if evaluating:
            self.log.write({"step": step, **self.evaluate()})
        if saving:
            self.checkpoints.save(self.accelerator, step, position)
        return record


def iterate_from(batches: list[list[int]], start: int) -> Iterator[tuple[int, list[int]]]:
    """(index, batch) from batch `start` on: where a resumed epoch picks up."""
    for i in range(start, len(batches)):
        yield i, batches[i]
