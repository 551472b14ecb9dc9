"""The loop: rounds of RLHF, where their rankings come from, and the demo.

    demo      the built-in summarization world's configuration of the loop
              (`alignloop demo`): world, SFT, then the rounds, the report
    rounds    (to come) the rounds, their state file and resume (`alignloop loop`)
    sources   (to come) where rankings come from: simulated labelers, a labeling
              server over HTTP, an AI judge

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

__all__ = [
    "STAGES",
    "TARGETS",
    "DemoConfig",
    "DemoRun",
    "DemoStage",
    "build_world",
    "console",
    "gold_pairs",
    "overoptimization",
    "pair_accuracy",
    "run_demo",
    "split_ids",
    "stage",
    "stand_in_completions",
]
