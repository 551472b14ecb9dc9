"""The `alignloop` console script: thin subcommands over the library.

Each subcommand parses its arguments and calls one library function; nothing here
holds logic that a test cannot reach through the library. Heavy imports (torch,
transformers) happen inside the subcommand that needs them, so `alignloop --help`
and the data commands start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any

from alignloop import __version__
from alignloop.config import ArgumentParser, ConfigError, add_config_arguments, config_from_args
from alignloop.evaluate.eval_config import EvalConfig
from alignloop.generate_config import GenerateConfig
from alignloop.loop import DemoConfig
from alignloop.loop.loop_config import LoopConfig
from alignloop.personal import PersonalFitConfig
from alignloop.schema import SchemaError
from alignloop.train import TrainingError
from alignloop.train.ppo_config import PPOConfig
from alignloop.train.reward_config import EvalRMConfig, RewardConfig, ScoreConfig
from alignloop.train.sft_config import SFTConfig
from alignloop.world.world_config import CandidatesConfig, LabelConfig, WorldBuildConfig

Handler = Callable[[argparse.Namespace], int]


def _print_json(obj: object) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False))


# --- alignloop data ... --------------------------------------------------------


def _data_validate(args: argparse.Namespace) -> int:
    from alignloop.io import read_records

    records = read_records(args.file, args.kind)
    print(f"{args.file}: {len(records)} valid {args.kind} records")
    return 0


def _data_convert(args: argparse.Namespace) -> int:
    from alignloop.io import read_records, write_records

    n = write_records(args.dst, read_records(args.src, args.kind))
    print(f"wrote {n} {args.kind} records to {args.dst}")
    return 0


def _data_import_hh(args: argparse.Namespace) -> int:
    from alignloop.io import import_hh, write_records

    result = import_hh(args.src, strict=args.strict)
    for message in result.skipped:
        print(f"skipped {message}", file=sys.stderr)
    n = write_records(args.out, result.comparisons)
    print(f"wrote {n} comparisons to {args.out} ({len(result.skipped)} rows skipped)")
    return 0


# --- alignloop feedback ... ----------------------------------------------------


def _feedback_pairs(args: argparse.Namespace) -> int:
    from alignloop.feedback import no_margin, rank_gap_margin, rankings_to_pairs
    from alignloop.io import read_prompts, read_records, write_records

    margin = {"none": no_margin, "rank-gap": rank_gap_margin}[args.margin]
    result = rankings_to_pairs(
        read_records(args.rankings, "ranking"),
        read_records(args.completions, "completion"),
        read_prompts(args.prompts),
        criterion=args.criterion,
        margin=margin,
    )
    n = write_records(args.out, result.pairs)
    print(
        f"wrote {n} pairs to {args.out} (unrankable rankings: {result.unrankable}, "
        f"pairs skipped for identical texts: {result.skipped_identical}, "
        f"for empty texts: {result.skipped_empty})"
    )
    return 0


def _feedback_agreement(args: argparse.Namespace) -> int:
    from alignloop.feedback import agreement_report
    from alignloop.io import read_records

    _print_json(agreement_report(read_records(args.rankings, "ranking")))
    return 0


def _feedback_consensus(args: argparse.Namespace) -> int:
    from alignloop.feedback import consensus
    from alignloop.io import read_records, write_records

    n = write_records(args.out, consensus(read_records(args.rankings, "ranking")))
    print(f"wrote {n} consensus rankings to {args.out}")
    return 0


# --- alignloop train-sft / generate / train-rm / eval-rm / score / train-ppo --------------


def _train_sft(config: SFTConfig) -> int:
    from alignloop.train.sft import train_sft

    _print_json(train_sft(config))
    return 0


def _generate(config: GenerateConfig) -> int:
    from alignloop.generate import generate_file

    n = generate_file(
        config.policy, config.prompts, config.out, k=config.k, temperature=config.temperature,
        max_new_tokens=config.max_new_tokens, max_prompt_length=config.max_prompt_length,
        batch_size=config.batch_size, seed=config.seed, policy_name=config.name, options=config,
        adapter=config.adapter, user=config.user, user_prefix=config.user_prefix,
    )  # fmt: skip
    print(f"wrote {n} completions to {config.out}")
    return 0


def _train_rm(config: RewardConfig) -> int:
    from alignloop.train.reward import train_reward_model

    train_reward_model(config)
    return 0


def _eval_rm(config: EvalRMConfig) -> int:
    from alignloop.models import RewardModel
    from alignloop.train.reward import (
        evaluate_reward_model,
        group_pairs,
        load_pairs,
        tokenize_groups,
    )

    model = RewardModel.from_pretrained(config.model, options=config, what="--model",
                                        new_head=config.new_head)  # fmt: skip
    weights = model.resolve_weights(reward=config.reward, user=config.user,
                                    user_weights=config.user_weights)  # fmt: skip
    groups = group_pairs(load_pairs(config.data))
    tokenize_groups(groups, model.tokenizer, config.max_length, append_eos=model.appends_eos)
    _print_json(evaluate_reward_model(model, groups, batch_size=config.batch_size,
                                      weights=weights, where=str(config.data)))  # fmt: skip
    return 0


def _score(config: ScoreConfig) -> int:
    from alignloop.chat import require_template
    from alignloop.io import atomic_write, read_prompts, read_records
    from alignloop.models import RewardModel

    completions = read_records(config.data, "completion")
    prompts = {p.id: p for p in read_prompts(config.prompts)}
    missing = [c for c in completions if c.prompt_id not in prompts]
    if missing:
        raise SchemaError(
            f"{missing[0].where}: field 'prompt_id': no prompt with id {missing[0].prompt_id!r} "
            f"in {config.prompts} ({len(missing)} completions affected)"
        )
    model = RewardModel.from_pretrained(config.model, options=config, what="--model",
                                        new_head=config.new_head)  # fmt: skip
    weights = model.resolve_weights(reward=config.reward, user=config.user,
                                    user_weights=config.user_weights)  # fmt: skip
    require_template(model.tokenizer, prompts.values(), config.model)
    texts = ([prompts[c.prompt_id].prompt for c in completions],
             [c.completion for c in completions])  # fmt: skip
    sizes = {"batch_size": config.batch_size, "max_length": config.max_length}
    rows = [{"id": c.id, "prompt_id": c.prompt_id} for c in completions]
    if model.n_heads == 1 and weights is None:
        for row, r in zip(rows, model.score(*texts, **sizes), strict=True):
            row["reward"] = r
    else:  # every head's score, and the combination where there is one
        table = model.head_scores(*texts, **sizes)  # (N, H) normalized
        weights = weights if weights is not None else model.default_weights
        if weights is not None:
            for row, r in zip(rows, (table @ model.weight_vector(weights)).tolist(), strict=True):
                row["reward"] = r
        if model.n_heads > 1:
            for row, scores in zip(rows, table.tolist(), strict=True):
                row["rewards"] = dict(zip(model.head_names, scores, strict=True))
    with atomic_write(config.out) as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    what = "rewards" if model.n_heads == 1 else f"scores of heads {', '.join(model.head_names)}"
    combined = "" if model.n_heads == 1 or weights is None else " and their combination"
    print(f"wrote {len(rows)} {what}{combined} to {config.out}")
    return 0


def _train_ppo(config: PPOConfig) -> int:
    from alignloop.train.ppo import train_ppo

    train_ppo(config)
    return 0


def _personal_fit(config: PersonalFitConfig) -> int:
    from alignloop.personal.fit import fit_user

    _print_json(fit_user(config))
    return 0


# --- alignloop eval / report --------------------------------------------------------


def _eval(config: EvalConfig) -> int:
    from alignloop.evaluate import evaluate

    result = evaluate(config)
    _print_json(result["metrics"])
    return 0


def _report(args: argparse.Namespace) -> int:
    from alignloop.evaluate.report import load_report_data, render_report

    data = load_report_data(
        args.data, ppo_log=args.ppo_log, sft_log=args.sft_log, rm_log=args.rm_log
    )
    path = render_report(data, args.out)
    print(f"wrote {path}")
    return 0


# --- alignloop world ... / demo ------------------------------------------------


def _world_build(config: WorldBuildConfig) -> int:
    from alignloop.loop import build_world

    paths = build_world(config.out, seed=config.seed, n_train=config.n_train,
                        n_eval=config.n_eval)  # fmt: skip
    _print_json({k: str(v) for k, v in paths.items()})
    return 0


def _world_candidates(config: CandidatesConfig) -> int:
    from alignloop.io import read_records, write_records
    from alignloop.loop import stand_in_completions

    prompts = read_records(config.prompts, "prompt")
    n = write_records(config.out, stand_in_completions(prompts, k=config.k, seed=config.seed))
    print(f"wrote {n} completions to {config.out}")
    return 0


def _world_label(config: LabelConfig) -> int:
    from alignloop.io import read_records, write_records
    from alignloop.world import default_labelers, simulate_rankings

    rankings = simulate_rankings(
        read_records(config.prompts, "prompt"),
        read_records(config.completions, "completion"),
        default_labelers(config.labelers),
        overlap=config.overlap,
        seed=config.seed,
    )
    n = write_records(config.out, rankings)
    print(f"wrote {n} rankings to {config.out}")
    return 0


def _demo(config: DemoConfig) -> int:
    from alignloop.loop import run_demo

    _print_json(run_demo(config))
    return 0


def _loop(config: LoopConfig) -> int:
    from alignloop.loop.rounds import run_loop
    from alignloop.loop.sources import ServerError

    try:
        metrics = run_loop(config)
    except ServerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_json({k: metrics[k] for k in ("rounds", "stop_reason", "final_policy")})
    return 0


# --- the parser ----------------------------------------------------------------


def _command(
    sub: argparse._SubParsersAction, name: str, handler: Handler, help: str
) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    parser.set_defaults(handler=handler)
    return parser


def _group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    parser = sub.add_parser(name, help=help, description=help)
    return parser.add_subparsers(title="commands", metavar="COMMAND", required=True)


def _typed(
    sub: argparse._SubParsersAction, name: str, run: Callable[[Any], int], help: str, cls: type
) -> None:
    """A subcommand whose flags are the options of the config class `cls` (and
    `--config FILE`); `run` gets the config: flags, then the file, then defaults."""
    parser = _command(sub, name, lambda args: run(config_from_args(cls, args)), help)
    add_config_arguments(parser, cls)


KINDS = ("prompt", "completion", "ranking", "comparison")


def _add_data_commands(data: argparse._SubParsersAction) -> None:
    p = _command(data, "validate", _data_validate, "Check every record of a file.")
    p.add_argument("file", help=".jsonl or .parquet file")
    p.add_argument("--kind", choices=KINDS, required=True, help="record type of the file")
    p = _command(data, "convert", _data_convert, "Convert between JSONL and Parquet.")
    p.add_argument("src", help="input .jsonl or .parquet file")
    p.add_argument("dst", help="output .jsonl or .parquet file (written atomically)")
    p.add_argument("--kind", choices=KINDS, required=True, help="record type of the file")
    p = _command(data, "import-hh", _data_import_hh, "Anthropic HH-RLHF rows to comparisons.")
    p.add_argument("src", help="HH-RLHF .jsonl file ({'chosen': ..., 'rejected': ...})")
    p.add_argument("--out", required=True, help="comparisons file to write")
    p.add_argument("--strict", action="store_true", help="fail on a bad row instead of skipping")


def _add_feedback_commands(fb: argparse._SubParsersAction) -> None:
    p = _command(fb, "pairs", _feedback_pairs, "Every strictly ordered pair of every ranking.")
    p.add_argument("--rankings", required=True, help="rankings file")
    p.add_argument("--completions", required=True, help="completions file")
    p.add_argument("--prompts", required=True, help="prompts file")
    p.add_argument("--out", required=True, help="comparisons file to write")
    p.add_argument("--criterion", help="only rankings by this criterion (default: all)")
    p.add_argument(
        "--margin",
        choices=("none", "rank-gap"),
        default="none",
        help="pair margin: none, or the number of rank groups between the two",
    )
    p = _command(fb, "agreement", _feedback_agreement, "Inter-labeler agreement as JSON.")
    p.add_argument("--rankings", required=True, help="rankings file")
    p = _command(fb, "consensus", _feedback_consensus, "One Bradley-Terry consensus per prompt.")
    p.add_argument("--rankings", required=True, help="rankings file")
    p.add_argument("--out", required=True, help="consensus rankings file to write")


def make_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="alignloop",
        description="The whole RLHF loop: generate, rank, pairs, reward model, PPO, evaluate.",
        epilog="On a shared CPU: the commands run with OMP_WAIT_POLICY=PASSIVE unless the "
        "environment sets it (OpenMP threads that wait spinning make a busy machine "
        "several times slower: issue 17); --threads N or ALIGNLOOP_THREADS=N sets torch's "
        "CPU threads (the demo's own --threads, default 1, decides within the demo).",
    )
    parser.add_argument("--version", action="version", version=f"alignloop {__version__}")
    parser.add_argument(
        "--threads",
        type=int,
        dest="global_threads",  # not the demo's own `threads`, which its subparser sets
        metavar="N",
        help=f"torch CPU threads (default: ${THREADS_ENV}, else torch's own)",
    )
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _typed(sub, "demo", _demo, "Run the loop on the built-in summarization task.", DemoConfig)
    _typed(sub, "loop", _loop, "Rounds of RLHF: sample, rank, reward model, PPO, evaluate; "
           "again (resumes where it was killed).", LoopConfig)  # fmt: skip
    _typed(sub, "train-sft", _train_sft, "Supervised fine-tuning on demonstrations.", SFTConfig)
    _typed(sub, "generate", _generate, "K sampled completions per prompt of a file.",
           GenerateConfig)  # fmt: skip
    _typed(sub, "train-rm", _train_rm, "Train a reward model on preference pairs.", RewardConfig)
    _typed(sub, "train-ppo", _train_ppo, "Tune a policy with PPO against a reward.", PPOConfig)
    _typed(sub, "eval-rm", _eval_rm, "Accuracy of a reward model on pairs, as JSON: overall, "
           "by_labeler and by_criterion. A model of several heads without --reward, --user or "
           "--user-weights reads each pair on its own criterion's head, or (personal) with its "
           "labeler's weights (one not trained on: the default weights).",
           EvalRMConfig)  # fmt: skip
    _typed(sub, "score", _score, "Reward of every completion of a file. A model of several "
           'heads: "rewards" {head: score} too, and "reward" the combination of --reward, '
           "--user or --user-weights (a personal model: its default user's weights; a "
           'criteria model given none: "rewards" only).', ScoreConfig)  # fmt: skip
    _typed(sub, "eval", _eval, "Reward, win rates, KL, length and toxicity of a policy.",
           EvalConfig)  # fmt: skip
    p = _command(sub, "report", _report, "A self-contained report.html from report data.")
    p.add_argument(
        "--data", nargs="*", default=[], help="report data JSON files, merged in order "
        "(e.g. an eval run's report_data.json)"
    )  # fmt: skip
    p.add_argument("--ppo-log", help="a PPO run's metrics.jsonl, for the PPO plots")
    p.add_argument("--sft-log", help="an SFT run's metrics.jsonl, for its loss curve")
    p.add_argument("--rm-log", help="a reward-model run's metrics.jsonl, for its curves")
    p.add_argument("--out", required=True, help="HTML file to write")

    personal = _group(sub, "personal", "A user's own reward: weights over a model's features.")
    _typed(personal, "fit", _personal_fit, "Fit a user's weights from their pairs (seconds).",
           PersonalFitConfig)  # fmt: skip
    _add_data_commands(_group(sub, "data", "Validate, convert and import record files."))
    _add_feedback_commands(_group(sub, "feedback", "Rankings to pairs, agreement and consensus."))
    world = _group(sub, "world", "The built-in synthetic summarization task.")
    _typed(world, "build", _world_build, "Prompts, tokenizer and a tiny initial policy.",
           WorldBuildConfig)  # fmt: skip
    _typed(world, "candidates", _world_candidates, "Stand-in completions (no model).",
           CandidatesConfig)  # fmt: skip
    _typed(world, "label", _world_label, "Simulated labelers rank completions.", LabelConfig)
    from alignloop.server.commands import add_server_commands

    add_server_commands(sub, _command, _group)
    return parser


THREADS_ENV = "ALIGNLOOP_THREADS"


def _set_up_threads(threads: int | None) -> None:
    """OpenMP's wait policy, read once when torch loads, so set before anything imports
    it (this module imports no torch); a user's own setting stays. Then torch's thread
    count, when --threads or $ALIGNLOOP_THREADS gives one."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads is None and os.environ.get(THREADS_ENV):
        try:
            threads = int(os.environ[THREADS_ENV])
        except ValueError:
            value = os.environ[THREADS_ENV]
            raise ConfigError(f"${THREADS_ENV} must be a whole number, not {value!r}") from None
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"--threads must be at least 1, not {threads}")
        import torch

        torch.set_num_threads(threads)


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        _set_up_threads(args.global_threads)
        return args.handler(args)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
