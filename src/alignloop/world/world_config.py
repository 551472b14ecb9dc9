"""Options of `alignloop world build`, `world candidates` and `world label`: each
field's help text is its `--help`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from alignloop.config import REQUIRED, option


@dataclass
class WorldBuildConfig:
    out: Path = option(REQUIRED, "directory to write")
    seed: int = option(0, "seed of the documents and of the initial policy's weights")
    n_train: int = option(2000, "training documents")
    n_eval: int = option(200, "held-out documents")


@dataclass
class CandidatesConfig:
    prompts: Path = option(REQUIRED, "prompts file")
    out: Path = option(REQUIRED, "completions file to write")
    k: int = option(4, "completions per prompt")
    seed: int = option(0, "seed of the stand-in sampler")


@dataclass
class LabelConfig:
    prompts: Path = option(REQUIRED, "prompts file")
    completions: Path = option(REQUIRED, "completions file")
    out: Path = option(REQUIRED, "rankings file to write")
    labelers: int = option(5, "size of the labeler pool")
    overlap: int = option(3, "distinct labelers per prompt")
    seed: int = option(0, "seed of the labelers' choices and of who labels what")
