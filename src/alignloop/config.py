"""Typed configuration written once: a dataclass per component becomes CLI flags.

Each field of a config dataclass is declared with `option(default, "help text")`;
the help text becomes `--help`, the annotation the flag's type. A run takes values
from, in order of precedence: command-line flags, then a `--config` file (YAML, TOML
or JSON), then the defaults. Unknown keys in a file are an error naming the file and
the key, so a typo cannot silently do nothing (the failure openai/lm-human-preferences
had with `hparams.noptepochs`).

    @dataclass
    class RewardConfig:
        model: str = option(REQUIRED, "model path or hub id")
        lr: float = option(1e-5, "learning rate")

    parser = argparse.ArgumentParser(); add_config_arguments(parser, RewardConfig)
    config = config_from_args(RewardConfig, parser.parse_args())

Configs that share options share a base (`train/base_config.py`, as TRL's
`_BaseConfig`): a subclass of `Options` changes a base option's default or help with
`override(...)`, the rest (help text, bounds) stays the base's, so each help text is
written once. `option(..., at_least=1)` is checked in one place, `Options.__post_init__`.
A field declared without `option` is not a flag (it is set from Python only).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import inspect
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

__all__ = [
    "REQUIRED",
    "ArgumentParser",
    "ConfigError",
    "Options",
    "add_config_arguments",
    "check_bounds",
    "config_from_args",
    "flag",
    "option",
    "override",
]

C = TypeVar("C")


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()  # a field the user must set (by flag or file)


class ConfigError(ValueError):
    """A bad configuration value or file, naming the key."""


def option(default: Any, help: str, *, at_least: float | None = None, **metadata: Any) -> Any:
    """A config field with its help text; `at_least`: the smallest value allowed (None,
    for an optional field, is always allowed). Mutable defaults are copied per instance.
    `pairs=True` on a `list[str]` of NAME=VALUE items: the flag may be given several
    times (`--reward a=1 --reward b=0.5`), and a config file may give a mapping."""
    metadata = {"help": help, **metadata}
    if at_least is not None:
        metadata["at_least"] = at_least
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


_INHERITED: Any = object()


def override(default: Any = _INHERITED, help: str | None = None) -> Any:
    """In a subclass of `Options`: a new default and/or help text for an option a base
    declares; what is not given (default, help, bounds) stays the base's."""
    metadata: dict[str, Any] = {"override": True}
    if help is not None:
        metadata["help"] = help
    if default is _INHERITED:
        return dataclasses.field(metadata=metadata)  # Options fills in the base's default
    field = option(default, "")
    field.metadata = types.MappingProxyType(metadata)
    return field


class Options:
    """Base of the configs that share options. Resolves each `override(...)` against
    the base's field when a subclass is defined (before `@dataclass` reads it), and
    checks every `at_least` bound after construction; a subclass's `__post_init__`
    calls `super().__post_init__()` first."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for name, field in list(vars(cls).items()):
            if not (isinstance(field, dataclasses.Field) and field.metadata.get("override")):
                continue
            base = next(
                (b.__dict__["__dataclass_fields__"][name] for b in cls.__mro__[1:]
                 if name in b.__dict__.get("__dataclass_fields__", {})),
                None,
            )  # fmt: skip
            if base is None:
                raise TypeError(f"{cls.__name__}.{name}: override() of an option no base has")
            own = {k: v for k, v in field.metadata.items() if k != "override"}
            field.metadata = types.MappingProxyType({**base.metadata, **own})
            if field.default is field.default_factory is dataclasses.MISSING:
                field.default, field.default_factory = base.default, base.default_factory

    def __post_init__(self) -> None:
        check_bounds(self)


def flag(name: str) -> str:
    """The command-line flag of a field: `max_new_tokens` -> `--max-new-tokens`."""
    return "--" + name.replace("_", "-")


def _in_help_order(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` in the order its --help lists them: the required ones in
    field order; then those the class itself declares (its overrides included), in
    its order; then those of its bases, the nearest base first."""
    rank: dict[str, tuple[int, int]] = {}
    for depth, klass in enumerate(cls.__mro__):
        for i, name in enumerate(inspect.get_annotations(klass)):
            rank.setdefault(name, (depth, i))
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    required = [f for f in fields if f.default is REQUIRED]
    return required + sorted((f for f in fields if f not in required), key=lambda f: rank[f.name])


def check_bounds(config: Any) -> None:
    """ConfigError for the first option (in --help order) below its `at_least`."""
    for f in _in_help_order(type(config)):
        bound, value = f.metadata.get("at_least"), getattr(config, f.name)
        if bound is not None and isinstance(value, int | float) and value < bound:
            raise ConfigError(f"{flag(f.name)} must be at least {bound}")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """(X, True) for `X | None`, (tp, False) otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _converter(tp: Any, optional: bool) -> tuple[Any, dict[str, Any]]:
    """argparse `type` and extra keyword arguments for an annotation."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        return type(choices[0]), {"choices": choices}
    if origin is list:
        (item,) = typing.get_args(tp)
        return item, {"nargs": "*"}
    if tp is bool:
        return None, {"action": argparse.BooleanOptionalAction}
    if tp in (int, float, str, Path):
        base = tp
    else:
        raise TypeError(f"config fields of type {tp!r} are not supported")
    if optional:
        # "none" on the command line sets an optional field back to None.
        def none_or_base(s: str) -> Any:
            return None if s.lower() == "none" else base(s)

        none_or_base.__name__ = base.__name__  # argparse: "invalid int value: 'x'"
        return none_or_base, {}
    return base, {}


def _flag_fields(cls: type) -> list[dataclasses.Field]:
    """The fields of `cls` that are flags (declared with `option`), in --help order."""
    return [f for f in _in_help_order(cls) if "help" in f.metadata]


def add_config_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    """One flag per field of `cls`, plus `--config FILE`. Flags default to
    SUPPRESS so `config_from_args` can tell what the user actually set."""
    hints = typing.get_type_hints(cls)
    parser.add_argument(
        "--config", type=Path, help="YAML, TOML or JSON file of these options (flags win)"
    )
    for f in _flag_fields(cls):
        tp, optional = _unwrap_optional(hints[f.name])
        convert, extra = _converter(tp, optional)
        if f.metadata.get("pairs"):  # NAME=VALUE items: each use of the flag adds some
            extra.update(nargs="+", action="extend", metavar="NAME=VALUE")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if isinstance(default, Path):
            default = str(default)
        shown = "required" if default is REQUIRED else f"default: {default!r}"
        kwargs: dict[str, Any] = {
            "dest": f.name,
            "default": argparse.SUPPRESS,
            "help": f"{f.metadata.get('help', '')} ({shown})",
            **extra,
        }
        if convert is not None:
            kwargs["type"] = convert
            kwargs.setdefault("metavar", f.name.upper())
        parser.add_argument(flag(f.name), **kwargs)


class ArgumentParser(argparse.ArgumentParser):
    """argparse without abbreviations (`generate --n 4` was taken for `--name 4`), whose
    subcommands reject a flag they do not know themselves, with their own usage and the
    nearest flags they do know (so `parse_known_args` never returns extras).
    Subparsers are of their parent's class, so a whole command tree gets both."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggest(extras)}")
        return namespace, extras

    def _suggest(self, extras: list[str]) -> str:
        """' (did you mean --name or --k?)' for the flags of `extras` near known ones."""
        known = [s for action in self._actions for s in action.option_strings]
        hints = {}
        for arg in extras:
            name = arg.split("=", 1)[0]
            close = difflib.get_close_matches(name, known) if name.startswith("--") else []
            close = _nearest(name, close)  # --temprature: --temperature, not --chat-template
            if close:
                hints[name] = f"did you mean {' or '.join(close)}?"
        if len(hints) <= 1:
            return "".join(f" ({hint})" for hint in hints.values())
        return " (" + "; ".join(f"{name}: {hint}" for name, hint in hints.items()) + ")"


def _nearest(name: str, close: list[str], within: float = 0.2) -> list[str]:
    """The matches (best first, as difflib gives them) about as near as the best."""
    ratios = [difflib.SequenceMatcher(None, name, c).ratio() for c in close]
    return [c for c, r in zip(close, ratios, strict=True) if r >= ratios[0] - within]


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    text = path.read_text(encoding="utf-8")
    suffix = path.suffix.lower()
    if suffix not in (".yaml", ".yml", ".toml", ".json"):
        raise ConfigError(f"{path}: use a .yaml, .toml or .json config file")
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib

            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text) or {}
    except Exception as e:  # each parser has its own error type
        raise ConfigError(f"{path}: cannot parse: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option names to values")
    return data


def _coerce(cls: type, key: str, value: Any, where: str) -> Any:
    """A file's value checked against the field's annotation (ints widen to floats)."""
    tp, optional = _unwrap_optional(typing.get_type_hints(cls)[key])
    if value is None and optional:
        return None
    origin = typing.get_origin(tp)
    field = next(f for f in dataclasses.fields(cls) if f.name == key)  # type: ignore[arg-type]
    if origin is list and isinstance(value, dict) and field.metadata.get("pairs"):
        value = [f"{k}={v}" for k, v in value.items()]  # a mapping of NAME=VALUE items
    ok = (
        (origin is Literal and value in typing.get_args(tp))
        or (origin is list and isinstance(value, list))
        or (tp is float and isinstance(value, int | float) and not isinstance(value, bool))
        or (tp is Path and isinstance(value, str))
        or (tp in (int, str, bool) and type(value) is tp)
    )
    if not ok:
        raise ConfigError(f"{where}: key {key!r}: {value!r} is not a valid {tp}")
    return Path(value) if tp is Path else float(value) if tp is float else value


def config_from_args(cls: type[C], args: argparse.Namespace | dict[str, Any]) -> C:
    """Build `cls` from a config file (if `--config` was given) overridden by flags."""
    given = dict(vars(args) if isinstance(args, argparse.Namespace) else args)
    names = {f.name for f in _flag_fields(cls)}
    values: dict[str, Any] = {}
    config_file = given.pop("config", None)
    if config_file is not None:
        for key, value in _read_file(Path(config_file)).items():
            key = key.replace("-", "_")
            if key not in names:
                raise ConfigError(f"{config_file}: unknown key {key!r}")
            values[key] = _coerce(cls, key, value, str(config_file))
    values.update({k: v for k, v in given.items() if k in names})
    config = cls(**values)
    missing = [flag(f.name) for f in _flag_fields(cls) if getattr(config, f.name) is REQUIRED]
    if missing:
        raise ConfigError(f"missing required option(s): {', '.join(missing)}")
    return config


def load_callable(spec: str, flag: str):
    """'package.module:function' or 'path/to/file.py:function' -> the function; every
    failure is a ConfigError that names the flag (`--reward-fn`, `--judge`)."""
    import importlib
    import importlib.util

    where, _, name = spec.rpartition(":")
    if not where or not name:
        raise ConfigError(f"{flag} {spec!r}: expected 'module:function' or 'file.py:function'")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.exists():
                raise ConfigError(f"{flag} {spec}: {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)  # type: ignore[arg-type]
            module_spec.loader.exec_module(module)  # type: ignore[union-attr]
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # an import error of any kind in the user's module
        raise ConfigError(f"{flag} {spec}: cannot import {where}: {e}") from e
    fn = getattr(module, name, None)
    if not callable(fn):
        raise ConfigError(f"{flag} {spec}: {where} has no function {name!r}")
    return fn
