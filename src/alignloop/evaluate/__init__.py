"""Evaluation of policies: win rates, KL to a reference, length, toxicity, the report.

    metrics.py    win_rate, length_stats, sequence_kl (the k1 KL of PPO, per completion)
    toxicity.py   pluggable classifiers: a word list, or any HF text classifier
    evaluate.py   evaluate_completions (score what exists), evaluate (`alignloop eval`)
    report.py     render_report: one self-contained report.html

Importing this package imports neither torch nor matplotlib; the functions that need
them import them when called.
"""

from alignloop.evaluate.eval_config import EvalConfig
from alignloop.evaluate.evaluate import (
    PROMPT_REFERENCE,
    Evaluation,
    evaluate,
    evaluate_completions,
    load_judge,
    report_data,
)
from alignloop.evaluate.metrics import length_stats, sequence_kl, win_rate
from alignloop.evaluate.report import ReportDataError, load_ppo_log, render_report
from alignloop.evaluate.toxicity import (
    HFToxicity,
    ToxicityClassifier,
    WordListToxicity,
    load_toxicity,
)

__all__ = [
    "PROMPT_REFERENCE",
    "EvalConfig",
    "Evaluation",
    "HFToxicity",
    "ReportDataError",
    "ToxicityClassifier",
    "WordListToxicity",
    "evaluate",
    "evaluate_completions",
    "length_stats",
    "load_judge",
    "load_ppo_log",
    "load_toxicity",
    "render_report",
    "report_data",
    "sequence_kl",
    "win_rate",
]
