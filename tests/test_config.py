import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from alignloop.config import REQUIRED, ConfigError, add_config_arguments, config_from_args, option


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
