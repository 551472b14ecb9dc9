"""The `alignloop` console script: thin subcommands over the library.

Each subcommand parses its arguments and calls one library function; nothing here
holds logic that a test cannot reach through the library. Heavy imports (torch,
transformers) happen inside the subcommand that needs them, so `alignloop --help`
and the data commands start fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from alignloop import __version__
from alignloop.config import ConfigError
from alignloop.schema import SchemaError
from alignloop.train import TrainingError

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
    from alignloop.io import read_records, write_records

    margin = {"none": no_margin, "rank-gap": rank_gap_margin}[args.margin]
    result = rankings_to_pairs(
        read_records(args.rankings, "ranking"),
        read_records(args.completions, "completion"),
        read_records(args.prompts, "prompt"),
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


# --- alignloop train-rm / eval-rm / score -------------------------------------------


def _train_rm(args: argparse.Namespace) -> int:
    from alignloop.config import config_from_args
    from alignloop.train.reward import train_reward_model
    from alignloop.train.reward_config import RewardConfig

    train_reward_model(config_from_args(RewardConfig, args))
    return 0


def _train_sft(args: argparse.Namespace) -> int:
    from alignloop.config import config_from_args
    from alignloop.train.sft import SFTConfig, train_sft

    _print_json(train_sft(config_from_args(SFTConfig, args)))
    return 0


def _generate(args: argparse.Namespace) -> int:
    from alignloop.generate import generate_file

    n = generate_file(
        args.policy, args.prompts, args.out, k=args.k, temperature=args.temperature,
        max_new_tokens=args.max_new_tokens, max_prompt_length=args.max_prompt_length,
        batch_size=args.batch_size, seed=args.seed, policy_name=args.name,
    )  # fmt: skip
    print(f"wrote {n} completions to {args.out}")
    return 0


def _train_ppo(args: argparse.Namespace) -> int:
    from alignloop.config import config_from_args
    from alignloop.train.ppo import train_ppo
    from alignloop.train.ppo_config import PPOConfig

    train_ppo(config_from_args(PPOConfig, args))
    return 0


def _eval_rm(args: argparse.Namespace) -> int:
    from alignloop.models import RewardModel
    from alignloop.train.reward import evaluate_pairs, group_pairs, load_pairs, tokenize_groups

    model = RewardModel.from_pretrained(args.model)
    groups = group_pairs(load_pairs(Path(args.data)))
    tokenize_groups(groups, model.tokenizer, args.max_length, append_eos=model.appends_eos)
    _print_json(evaluate_pairs(model, groups, batch_size=args.batch_size))
    return 0


def _score(args: argparse.Namespace) -> int:
    from alignloop.io import atomic_write, read_records
    from alignloop.models import RewardModel

    completions = read_records(args.data, "completion")
    prompts = {p.id: p for p in read_records(args.prompts, "prompt")}
    missing = [c for c in completions if c.prompt_id not in prompts]
    if missing:
        raise SchemaError(
            f"{missing[0].where}: field 'prompt_id': no prompt with id {missing[0].prompt_id!r} "
            f"in {args.prompts} ({len(missing)} completions affected)"
        )
    model = RewardModel.from_pretrained(args.model)
    rewards = model.score(
        [prompts[c.prompt_id].prompt for c in completions],
        [c.completion for c in completions],
        batch_size=args.batch_size,
        max_length=args.max_length,
    )
    with atomic_write(args.out) as f:
        for c, r in zip(completions, rewards, strict=True):
            f.write(json.dumps({"id": c.id, "prompt_id": c.prompt_id, "reward": r}) + "\n")
    print(f"wrote {len(rewards)} rewards to {args.out}")
    return 0


# --- alignloop eval / report --------------------------------------------------------


def _eval(args: argparse.Namespace) -> int:
    from alignloop.config import config_from_args
    from alignloop.evaluate import EvalConfig, evaluate

    result = evaluate(config_from_args(EvalConfig, args))
    _print_json(result["metrics"])
    return 0


def _report(args: argparse.Namespace) -> int:
    from alignloop.evaluate.report import load_report_data, render_report

    path = render_report(load_report_data(args.data, ppo_log=args.ppo_log), args.out)
    print(f"wrote {path}")
    return 0


# --- alignloop world ... / demo ------------------------------------------------


def _world_build(args: argparse.Namespace) -> int:
    from alignloop.loop import build_world

    paths = build_world(args.out, seed=args.seed, n_train=args.n_train, n_eval=args.n_eval)
    _print_json({k: str(v) for k, v in paths.items()})
    return 0


def _world_candidates(args: argparse.Namespace) -> int:
    from alignloop.io import read_records, write_records
    from alignloop.loop import stand_in_completions

    prompts = read_records(args.prompts, "prompt")
    n = write_records(args.out, stand_in_completions(prompts, k=args.k, seed=args.seed))
    print(f"wrote {n} completions to {args.out}")
    return 0


def _world_label(args: argparse.Namespace) -> int:
    from alignloop.io import read_records, write_records
    from alignloop.world import default_labelers, simulate_rankings

    rankings = simulate_rankings(
        read_records(args.prompts, "prompt"),
        read_records(args.completions, "completion"),
        default_labelers(args.labelers),
        overlap=args.overlap,
        seed=args.seed,
    )
    n = write_records(args.out, rankings)
    print(f"wrote {n} rankings to {args.out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from alignloop.loop import DemoConfig, run_demo

    config = DemoConfig(out=Path(args.out), seed=args.seed, quick=args.quick,
                        threads=args.threads)  # fmt: skip
    metrics = run_demo(config)
    _print_json(metrics)
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


KINDS = ("prompt", "completion", "ranking", "comparison")


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignloop",
        description="The whole RLHF loop: generate, rank, pairs, reward model, PPO, evaluate.",
    )
    parser.add_argument("--version", action="version", version=f"alignloop {__version__}")
    sub = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)

    p = _command(sub, "demo", _demo, "Run the loop on the built-in summarization task.")
    p.add_argument("--out", default="runs/demo", help="run directory (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of every stage (default: 0)")
    p.add_argument("--quick", action="store_true", help="a small run for tests (about a minute)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default: 1; the demo's models are tiny)")

    from alignloop.config import add_config_arguments
    from alignloop.train.ppo_config import PPOConfig
    from alignloop.train.reward_config import RewardConfig
    from alignloop.train.sft_config import SFTConfig

    p = _command(sub, "train-sft", _train_sft, "Supervised fine-tuning on demonstrations.")
    add_config_arguments(p, SFTConfig)
    p = _command(sub, "generate", _generate, "K sampled completions per prompt of a file.")
    p.add_argument("--policy", required=True, help="causal LM: a local path or a hub id")
    p.add_argument("--prompts", required=True, help="prompts file (.jsonl or .parquet)")
    p.add_argument("--out", required=True, help="completions file to write")
    p.add_argument("--k", type=int, default=4, help="completions per prompt (default: 4)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    p.add_argument("--max-new-tokens", type=int, default=64, help="longest completion")
    p.add_argument("--max-prompt-length", type=int, default=None,
                   help="longer prompts lose their start (default: the model's limit)")
    p.add_argument("--batch-size", type=int, default=16, help="prompts per generate call")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--name", help="the completions' 'policy' field (default: the policy path)")
    p = _command(sub, "train-rm", _train_rm, "Train a reward model on preference pairs.")
    add_config_arguments(p, RewardConfig)
    p = _command(sub, "train-ppo", _train_ppo, "Tune a policy with PPO against a reward.")
    add_config_arguments(p, PPOConfig)
    p = _command(sub, "eval-rm", _eval_rm, "Accuracy of a reward model on pairs, as JSON.")
    p.add_argument("--model", required=True, help="reward model directory")
    p.add_argument("--data", required=True, help="comparisons file or HH-RLHF file")
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    p = _command(sub, "score", _score, "Reward of every completion of a file.")
    p.add_argument("--model", required=True, help="reward model directory")
    p.add_argument("--data", required=True, help="completions file")
    p.add_argument("--prompts", required=True, help="prompts file the completions refer to")
    p.add_argument("--out", required=True, help='JSONL to write: {"id", "prompt_id", "reward"}')
    p.add_argument("--max-length", type=int, default=512, help="tokens per sequence")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    from alignloop.evaluate.eval_config import EvalConfig

    p = _command(sub, "eval", _eval, "Reward, win rates, KL, length and toxicity of a policy.")
    add_config_arguments(p, EvalConfig)
    p = _command(sub, "report", _report, "A self-contained report.html from report data.")
    p.add_argument(
        "--data", nargs="*", default=[], help="report data JSON files, merged in order "
        "(e.g. an eval run's report_data.json)"
    )  # fmt: skip
    p.add_argument("--ppo-log", help="a PPO run's metrics.jsonl, for the PPO plots")
    p.add_argument("--out", required=True, help="HTML file to write")

    data = _group(sub, "data", "Validate, convert and import record files.")
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

    fb = _group(sub, "feedback", "Rankings to pairs, agreement and consensus.")
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

    world = _group(sub, "world", "The built-in synthetic summarization task.")
    p = _command(world, "build", _world_build, "Prompts, tokenizer and a tiny initial policy.")
    p.add_argument("--out", required=True, help="directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-train", type=int, default=2000, help="training documents")
    p.add_argument("--n-eval", type=int, default=200, help="held-out documents")
    p = _command(world, "candidates", _world_candidates, "Stand-in completions (no model).")
    p.add_argument("--prompts", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--k", type=int, default=4, help="completions per prompt")
    p.add_argument("--seed", type=int, default=0)
    p = _command(world, "label", _world_label, "Simulated labelers rank completions.")
    p.add_argument("--prompts", required=True)
    p.add_argument("--completions", required=True)
    p.add_argument("--out", required=True, help="rankings file to write")
    p.add_argument("--labelers", type=int, default=5, help="size of the labeler pool")
    p.add_argument("--overlap", type=int, default=3, help="distinct labelers per prompt")
    p.add_argument("--seed", type=int, default=0)
    from alignloop.server.commands import add_server_commands
    add_server_commands(sub, _command, _group)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SchemaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ConfigError, TrainingError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
