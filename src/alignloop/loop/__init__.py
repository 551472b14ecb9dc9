"""The loop: rounds of RLHF, where their rankings come from, and the demo.

    demo         the built-in summarization world's run of the loop (`alignloop
                 demo`): world, SFT, one round stage by stage or the rounds, the report
    rounds       the rounds, their state file and resume (`alignloop loop`)
    loop_config  LoopConfig, the options of `alignloop loop`
    sources      where rankings come from: simulated labelers, a labeling server over
                 HTTP, an AI judge (one interface, `LabelSource`)

Importing this package imports no torch (the CLI reads `DemoConfig` at start-up).
"""

from alignloop.loop.demo import (
    STAGES,
    TARGETS,
    DemoConfig,
    DemoRun,
    DemoStage,
    build_world,
    console,
    gold_pairs,
    overoptimization,
    pair_accuracy,
    run_demo,
    split_ids,
    stage,
    stand_in_completions,
)
from alignloop.loop.loop_config import LoopConfig
from alignloop.loop.rounds import ROUND_KEYS, evaluate_round, run_loop, run_rounds
from alignloop.loop.sources import JudgeLabelers, LabelSource, ServerLabelers, SimulatedLabelers

__all__ = [
    "ROUND_KEYS",
    "STAGES",
    "TARGETS",
    "DemoConfig",
    "DemoRun",
    "DemoStage",
    "JudgeLabelers",
    "LabelSource",
    "LoopConfig",
    "ServerLabelers",
    "SimulatedLabelers",
    "build_world",
    "console",
    "evaluate_round",
    "gold_pairs",
    "overoptimization",
    "pair_accuracy",
    "run_demo",
    "run_loop",
    "run_rounds",
    "split_ids",
    "stage",
    "stand_in_completions",
]
