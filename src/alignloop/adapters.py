"""LoRA adapters on one shared base policy: per-user policies (issue 16).

A personalized policy is the base policy plus a small peft adapter tuned by PPO against
one user's reward (`alignloop train-ppo --lora-r R --save-adapter` writes it: an
`adapter_config.json` naming its base by absolute path or hub id, and the adapter's
weights). Several adapters sit on one loaded base and are switched per call, and the
base itself is the adapter off (PPO's reference):

    policy, tokenizer = load_policy("sft")                       # the shared base
    policy = load_adapters(policy, {"ann": "users/ann", "bob": "users/bob"}, base="sft")
    generate_completions(policy, tokenizer, prompts, adapter="ann")
    generate_completions(policy, tokenizer, prompts, adapter=ADAPTER_OFF)  # the base

Loading checks what can be checked before the weights go in, each failure one line
(`ConfigError`): a folder without adapter_config.json, an adapter of a reward model
rather than a causal LM, one made for another base (its recorded base against
`--policy`; only a warning where the two differ by location alone, as when a run's
folder was moved), weights that do not fit the base's layers.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

from alignloop.config import ConfigError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_OFF",
    "adapter_active",
    "check_base",
    "load_adapter",
    "load_adapters",
    "read_adapter_config",
]

ADAPTER_CONFIG = "adapter_config.json"  # what peft's save_pretrained writes
ADAPTER_OFF = "off"  # `adapter_active`'s name for the base with every adapter disabled


def read_adapter_config(path: str | Path, what: str = "--adapter") -> dict:
    """The adapter folder's adapter_config.json, checked: a folder that has one, of a
    causal LM's adapter."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ConfigError(f"{what} {path}: no such directory ({folder.resolve()})")
    file = folder / ADAPTER_CONFIG
    if not file.is_file():
        raise ConfigError(
            f"{what} {path}: no {ADAPTER_CONFIG} in it (not a peft adapter folder; "
            "train-ppo --lora-r R --save-adapter writes one)"
        )
    try:
        config = json.loads(file.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{file}: not JSON ({e})") from e
    task = config.get("task_type")
    if task not in (None, "CAUSAL_LM"):
        raise ConfigError(
            f"{what} {path}: an adapter of a {task} model (a reward model?), not of a causal LM"
        )
    return config


def _name(reference: str) -> str:
    """A model's last name: the folder of a path, the name of a hub id "org/name"."""
    return Path(reference.rstrip("/\\")).name


def check_base(recorded: str | None, base: str | Path, adapter: str | Path, what="--adapter"):
    """The base an adapter was made for (`base_model_name_or_path`) against the one it
    is put on: the same model (as `models.model_reference` names it), or a warning where
    only the location differs (the same last name: a moved or copied folder, a hub
    model saved locally); another name is a `ConfigError`. Nothing is recorded: no
    check."""
    from alignloop.models import model_reference

    if not recorded:
        return
    ours = model_reference(base)
    if recorded == ours or model_reference(recorded) == ours:
        return
    if _name(recorded) == _name(ours):
        warnings.warn(
            f"{what} {adapter} was made for the base {recorded}; putting it on {ours}, "
            "the same name in another place",
            stacklevel=3,
        )
        return
    raise ConfigError(
        f"{what} {adapter} was made for the base {recorded} ({ADAPTER_CONFIG}'s "
        f"base_model_name_or_path), not for {base}: give that base as --policy"
    )


def load_adapter(
    model,
    path: str | Path,
    *,
    name: str = "default",
    base: str | Path | None = None,
    what: str = "--adapter",
):
    """`model` (a causal LM, or a peft model already holding adapters) with the adapter
    saved in `path` added under `name`, frozen, and active. `base`: how the base was
    given (a path or hub id), checked against the adapter's record (`check_base`).
    Returns the peft model (`model` itself where it already was one)."""
    from peft import PeftModel

    if name == ADAPTER_OFF:
        raise ConfigError(f"{what} {path}: {ADAPTER_OFF!r} names the base, not an adapter")
    config = read_adapter_config(path, what)
    if base is not None:
        check_base(config.get("base_model_name_or_path"), base, path, what)
    is_peft = isinstance(model, PeftModel)
    if is_peft and name in model.peft_config:
        raise ConfigError(f"{what} {path}: the model already has an adapter named {name!r}")
    try:
        with warnings.catch_warnings():
            # peft's wrapper reads a property transformers 5 deprecates: noise to a user
            warnings.filterwarnings("ignore", ".*is_gradient_checkpointing", FutureWarning)
            if is_peft:
                model.load_adapter(str(path), adapter_name=name, is_trainable=False)
                model.set_adapter(name, inference_mode=True)
            else:
                model = PeftModel.from_pretrained(model, str(path), adapter_name=name)
    except (RuntimeError, ValueError, KeyError) as e:  # size mismatch, missing modules
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} {path}: does not fit the base {base or ''}: {first}") from e
    return model


def load_adapters(model, adapters: Mapping[str, str | Path], *, base=None, what="--adapter"):
    """Several adapters on one base, each under its name (`{"ann": "users/ann"}`);
    the last one is active. Switch with `adapter_active`."""
    if not adapters:
        raise ValueError("no adapters to load")
    for name, path in adapters.items():
        model = load_adapter(model, path, name=name, base=base, what=what)
    return model


@contextlib.contextmanager
def adapter_active(model, name: str | None) -> Iterator:
    """For the duration, `model` computes with its adapter `name`, or with none at all
    (`ADAPTER_OFF`: the base); None leaves the model as it is. The active adapter and
    which parameters train are as before afterwards (peft's set_adapter changes both)."""
    if name is None:
        yield model
        return
    if not hasattr(model, "peft_config"):
        raise ValueError(f"adapter {name!r}: the model holds no adapters")
    if name == ADAPTER_OFF:
        with model.disable_adapter():
            yield model
        return
    if name not in model.peft_config:
        raise ValueError(f"no adapter {name!r}: the model holds {sorted(model.peft_config)}")
    previous = model.active_adapter
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    model.set_adapter(name, inference_mode=True)
    try:
        yield model
    finally:
        model.set_adapter(previous)
        for n, p in model.named_parameters():
            p.requires_grad_(trains[n])
