import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from alignloop.config import (
    REQUIRED,
    ArgumentParser,
    ConfigError,
    Options,
    add_config_arguments,
    config_from_args,
    option,
    override,
)


@dataclass
class Toy:
    model: str = option(REQUIRED, "model path or hub id")
    lr: float = option(1e-5, "learning rate")
    epochs: int = option(1, "passes over the data")
    loss: Literal["sigmoid", "hinge"] = option("sigmoid", "pairwise loss")
    lora: bool = option(False, "train LoRA adapters")
    eval_data: Path | None = option(None, "held-out pairs")
    targets: list[str] = option(["q_proj", "v_proj"], "LoRA target modules")


def parse(argv, cls=Toy):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, cls)
    return config_from_args(cls, parser.parse_args(argv))


def test_flags_with_types_and_defaults():
    c = parse(["--model", "m", "--lr", "3e-4", "--loss", "hinge", "--lora", "--targets", "a", "b"])
    assert c == Toy(model="m", lr=3e-4, loss="hinge", lora=True, targets=["a", "b"])
    assert parse(["--model", "m"]).targets == ["q_proj", "v_proj"]
    assert parse(["--model", "m", "--eval-data", "x.jsonl"]).eval_data == Path("x.jsonl")
    assert parse(["--model", "m", "--eval-data", "none"]).eval_data is None


def test_help_comes_from_the_field(capsys):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Toy)
    help_text = parser.format_help()
    assert "learning rate (default: 1e-05)" in help_text and "(required)" in help_text


def test_missing_required_and_bad_choice():
    with pytest.raises(ConfigError, match="--model"):
        parse([])
    with pytest.raises(SystemExit):
        parse(["--model", "m", "--loss", "nope"])


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("c.yaml", "model: m\nlr: 0.001\nepochs: 3\n"),
        ("c.toml", 'model = "m"\nlr = 0.001\nepochs = 3\n'),
        ("c.json", '{"model": "m", "lr": 0.001, "epochs": 3}'),
    ],
)
def test_config_file_then_flags_override(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    c = parse(["--config", str(path), "--epochs", "5"])
    assert (c.model, c.lr, c.epochs) == ("m", 0.001, 5)


def test_unknown_or_mistyped_key_in_file_names_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: m\nnoptepochs: 4\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'noptepochs'"):
        parse(["--config", str(path)])
    path.write_text("model: m\nepochs: many\n")
    with pytest.raises(ConfigError, match=r"key 'epochs': 'many' is not a valid"):
        parse(["--config", str(path)])
    path.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        parse(["--config", str(path)])


# --- shared bases: override(...) and bounds --------------------------------------------


@dataclass
class Base(Options):
    lr: float = option(1e-5, "peak learning rate", at_least=0)
    batch_size: int = option(8, "examples per step", at_least=1)
    max_steps: int | None = option(None, "step budget", at_least=1)


@dataclass
class Child(Base):
    data: str = option(REQUIRED, "training data")
    lr: float = override(3e-4)
    batch_size: int = override(help="prompts per step")
    seed: int = 0  # not an option: no flag, no key in a file


def test_override_keeps_what_it_does_not_change():
    fields = {f.name: f for f in dataclasses.fields(Child)}
    assert (Child(data="d").lr, fields["lr"].metadata["help"]) == (3e-4, "peak learning rate")
    assert (Child(data="d").batch_size, fields["batch_size"].metadata["help"]) == (
        8, "prompts per step"
    )  # fmt: skip
    assert Base().lr == 1e-5  # the base keeps its own default
    with pytest.raises(ConfigError, match="--batch-size must be at least 1"):
        Child(data="d", batch_size=0)  # the base's bound holds in the child
    with pytest.raises(TypeError, match="Orphan.nothing: override"):

        @dataclass
        class Orphan(Base):
            nothing: int = override(3)


def test_bounds_allow_none_and_name_the_flag():
    assert Base(max_steps=None).max_steps is None
    with pytest.raises(ConfigError, match="--max-steps must be at least 1"):
        Base(max_steps=0)
    with pytest.raises(ConfigError, match="--lr must be at least 0"):
        Base(lr=-1.0)


def test_help_lists_required_then_own_then_inherited_options(tmp_path):
    parser = argparse.ArgumentParser()
    add_config_arguments(parser, Child)
    flags = [a.option_strings[0] for a in parser._actions if a.option_strings[0] != "-h"]
    assert flags == ["--config", "--data", "--lr", "--batch-size", "--max-steps"]
    help_text = parser.format_help()
    assert "peak learning rate (default: 0.0003)" in help_text and "--seed" not in help_text
    path = tmp_path / "c.yaml"
    path.write_text("data: d\nseed: 3\n")
    with pytest.raises(ConfigError, match="unknown key 'seed'"):
        parse(["--config", str(path)], Child)


def test_each_trainer_keeps_its_own_defaults():
    from alignloop.evaluate.eval_config import EvalConfig
    from alignloop.train.ppo_config import PPOConfig
    from alignloop.train.reward_config import RewardConfig
    from alignloop.train.sft_config import SFTConfig

    rm = RewardConfig(model="m", data=Path("d"), out=Path("o"))
    sft = SFTConfig(model="m", prompts=Path("p"), out=Path("o"))
    ppo = PPOConfig(policy="m", prompts=Path("p"), out=Path("o"), reward_model="r")
    ev = EvalConfig(policy="m", prompts=Path("p"), out=Path("o"))
    names = ("lr", "scheduler", "warmup_ratio", "save_every", "batch_size", "grad_accum")
    assert [getattr(rm, n) for n in names] == [1e-5, "linear", 0.03, 100, 8, 1]
    assert [getattr(sft, n) for n in names] == [2e-5, "cosine", 0.03, 200, 16, 1]
    assert [getattr(ppo, n) for n in names] == [3e-6, "linear", 0.0, 50, 16, 1]
    names = ("epochs", "eval_fraction", "eval_every", "max_length", "log_every")
    assert [getattr(rm, n) for n in names] == [1, 0.1, 50, 512, 10]
    assert [getattr(sft, n) for n in names] == [3, 0.05, 100, 512, 10]
    sampling = ("temperature", "max_new_tokens", "max_prompt_length", "reward_max_length")
    assert [getattr(ppo, n) for n in sampling] == [getattr(ev, n) for n in sampling]
    assert [getattr(ev, n) for n in sampling] == [0.7, 53, 512, 1024]
    assert not hasattr(ppo, "lora_dropout") and not hasattr(ppo, "epochs")


def test_the_parser_takes_no_abbreviations_and_suggests_flags(capsys):
    parser = ArgumentParser(prog="toy")
    add_config_arguments(parser, Toy)
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--epo", "3"])  # argparse would read --epochs
    err = capsys.readouterr().err
    assert "usage: toy" in err and "unrecognized arguments: --epo 3" in err
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--eval-dat", "x", "--tragets", "a"])
    assert "(--eval-dat: did you mean --eval-data?; --tragets: did you mean --targets?)" in (
        capsys.readouterr().err
    )


def test_an_optional_number_flag_names_its_type(capsys):
    assert parse(["--data", "d", "--max-steps", "none"], Child).max_steps is None
    with pytest.raises(SystemExit):
        parse(["--data", "d", "--max-steps", "x"], Child)
    assert "argument --max-steps: invalid int value: 'x'" in capsys.readouterr().err
