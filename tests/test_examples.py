"""examples/ cannot rot: every YAML config loads through its command's parser and
`config_from_args` (an unknown key is an error there), every accelerate config loads
through accelerate's own reader (which rejects unknown keys too), the HH preparation
script runs on the real HH sample, and FSDP through accelerate on 2 CPU processes is
tried: accelerate 1.15 refuses FSDP without a GPU, and the skip message says so in
its own words."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from alignloop.cli import make_parser
from alignloop.config import config_from_args
from alignloop.evaluate.eval_config import EvalConfig
from alignloop.generate_config import GenerateConfig
from alignloop.train.ppo_config import PPOConfig
from alignloop.train.reward_config import RewardConfig
from alignloop.train.sft_config import SFTConfig

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
HH_SAMPLE = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"

# A config's file name starts with its command: train-sft-lora.yaml is train-sft's.
COMMANDS = {
    "train-sft": SFTConfig,
    "train-rm": RewardConfig,
    "train-ppo": PPOConfig,
    "generate": GenerateConfig,
    "eval": EvalConfig,
}
CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.parent.name != "accelerate")
ACCELERATE = sorted((EXAMPLES / "accelerate").glob("*.yaml"))


def _command(path: Path) -> str:
    matches = [c for c in COMMANDS if path.stem == c or path.stem.startswith(c + "-")]
    assert len(matches) == 1, f"{path.name}: the name must start with one of {list(COMMANDS)}"
    return matches[0]


def test_there_are_configs_for_every_trainer_lora_and_full():
    names = {p.stem for p in CONFIGS}
    for command in ("train-sft", "train-rm", "train-ppo"):
        assert {f"{command}-full", f"{command}-lora"} <= names
    assert {"eval", "generate"} <= names
    assert {p.stem for p in ACCELERATE} == {"ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: str(p.relative_to(EXAMPLES)))
def test_every_example_config_loads_through_its_command(path):
    command = _command(path)
    args = make_parser().parse_args([command, "--config", str(path)])
    config = config_from_args(COMMANDS[command], args)
    assert isinstance(config, COMMANDS[command])
    for key, value in yaml.safe_load(path.read_text()).items():  # each key lands as written
        got = getattr(config, key.replace("-", "_"))
        assert (str(got) if isinstance(got, Path) else got) == value, key


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_every_accelerate_config_loads_in_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))  # unknown keys raise there
    assert config.mixed_precision == "bf16" and config.num_processes == 8
    expected = {"ddp": "MULTI_GPU", "fsdp": "FSDP"}.get(path.stem, "DEEPSPEED")
    assert config.distributed_type.value == expected
    if expected == "DEEPSPEED":
        assert config.deepspeed_config["zero_stage"] == int(path.stem[-1])
    if expected == "FSDP":  # trainers save ordinary folders: a full state dict
        assert config.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def _prepare_hh():
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (it lives in ../shared, outside the repository)")
    import importlib.util

    spec = importlib.util.spec_from_file_location("prepare_hh", EXAMPLES / "hh" / "prepare_hh.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_prepare_hh_on_the_real_sample(tmp_path):
    from alignloop.io import import_hh, read_records

    out = tmp_path / "hh"
    argv = ["--train", str(HH_SAMPLE), "--test", str(HH_SAMPLE), "--out", str(out)]
    assert _prepare_hh().main(argv) == 0
    sft = read_records(out / "sft.jsonl", "prompt")
    prompts = read_records(out / "prompts.jsonl", "prompt")
    assert len(sft) == 1596 and all(p.reference and p.prompt.endswith("Assistant:") for p in sft)
    assert len(prompts) == len({p.prompt for p in sft}) < len(sft)
    assert len(read_records(out / "eval_prompts.jsonl", "prompt")) == len(prompts)
    pairs = read_records(out / "pairs-train.jsonl", "comparison")
    assert pairs == import_hh(HH_SAMPLE).comparisons  # what `alignloop data import-hh` gives


def test_prepare_hh_conversational_keeps_every_turn(tmp_path):
    from alignloop.io import read_records

    module = _prepare_hh()
    out = tmp_path / "hh"
    argv = ["--train", str(HH_SAMPLE), "--test", str(HH_SAMPLE), "--out", str(out)]
    assert module.main([*argv, "--conversational"]) == 0
    prompts = read_records(out / "prompts.jsonl", "prompt")
    for p in prompts:
        roles = [m.role for m in p.prompt]
        assert roles[0] == roles[-1] == "user"
        assert all(a != b for a, b in zip(roles, roles[1:], strict=False))  # turns alternate
    # the turns render back to HH's text
    rendered = "".join(f"\n\n{'Human' if m.role == 'user' else 'Assistant'}: {m.content}"
                       for m in prompts[0].prompt) + "\n\nAssistant:"  # fmt: skip
    assert rendered == module.import_hh(HH_SAMPLE).comparisons[0].prompt
    pairs = read_records(out / "pairs-train.jsonl", "comparison")
    assert len(pairs) == 1596 and pairs[0].chosen[0].role == "assistant"
    assert read_records(out / "sft.jsonl", "prompt")[0].reference == pairs[0].chosen[0].content


# --- FSDP through accelerate on CPU ---------------------------------------------------

FSDP_ENV = {
    "ACCELERATE_USE_FSDP": "true",
    "FSDP_SHARDING_STRATEGY": "FULL_SHARD",
    "FSDP_AUTO_WRAP_POLICY": "TRANSFORMER_BASED_WRAP",
    "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT",
    "FSDP_USE_ORIG_PARAMS": "true",
    "FSDP_SYNC_MODULE_STATES": "true",
}
PROBE = """
import json, os, sys
from pathlib import Path
from alignloop.train.common import make_accelerator
accelerator = make_accelerator(mixed_precision="no", out=Path(sys.argv[1]))
print(json.dumps({"rank": accelerator.process_index, "processes": accelerator.num_processes,
                  "type": accelerator.distributed_type.value}), flush=True)
"""


def _torchrun(argv: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    torchrun = Path(sys.executable).parent / "torchrun"
    return subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", *argv],
        env={**os.environ, "OMP_NUM_THREADS": "1", **env},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.mark.slow
def test_fsdp_through_accelerate_on_two_cpu_processes(tmp_path):
    """FSDP as accelerate configures it (ACCELERATE_USE_FSDP and FSDP_* variables, what
    `accelerate launch --config_file examples/accelerate/fsdp.yaml` sets) on 2 CPU
    processes (gloo). accelerate 1.15 refuses: its FullyShardedDataParallelPlugin
    needs an accelerator device ("There are currently no available devices found,
    must be one of 'XPU', 'CUDA', ..."), so the test skips with accelerate's own
    message. Where FSDP comes up, the 2 processes are checked and the reward and PPO
    trainers run sharded."""
    import accelerate
    import torch

    probe = tmp_path / "probe.py"
    probe.write_text(PROBE)
    done = _torchrun([str(probe), str(tmp_path)], FSDP_ENV)
    refusal = [line for line in done.stderr.splitlines() if "no available devices" in line]
    if done.returncode != 0 and refusal:
        pytest.skip(
            f"FSDP on CPU is refused by accelerate {accelerate.__version__} (torch "
            f"{torch.__version__}): {refusal[0].strip()}"
        )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert sorted(r["rank"] for r in rows) == [0, 1] and {r["processes"] for r in rows} == {2}
    kinds = {r["type"] for r in rows}
    if kinds != {"FSDP"}:
        pytest.skip(f"ACCELERATE_USE_FSDP=true on 2 CPU processes gave {sorted(kinds)}, not FSDP")
    _run_sharded_trainers(tmp_path)


def _run_sharded_trainers(tmp_path: Path) -> None:
    """train-rm and train-ppo on 2 FSDP processes from the story model."""
    from alignloop.io import write_records
    from alignloop.schema import Comparison, Prompt

    model = REPO.parent / "shared" / "models" / "stories260k"
    if not model.exists():
        pytest.skip(f"{model} is absent")
    pairs = [
        Comparison(prompt=f"Tom saw a dog {i}.", chosen="He was happy.", rejected="He was sad.",
                   prompt_id=f"p{i}")
        for i in range(16)
    ]  # fmt: skip
    write_records(tmp_path / "pairs.jsonl", pairs)
    write_records(tmp_path / "prompts.jsonl", [Prompt(id=f"p{i}", prompt=p.prompt)
                                               for i, p in enumerate(pairs)])  # fmt: skip
    rm = _torchrun(["-m", "alignloop.cli", "train-rm", "--model", str(model), "--data",
                    str(tmp_path / "pairs.jsonl"), "--out", str(tmp_path / "rm"),
                    "--max-steps", "2", "--batch-size", "2", "--save-every", "0",
                    "--norm-samples", "8", "--mixed-precision", "no"], FSDP_ENV)  # fmt: skip
    assert rm.returncode == 0, rm.stderr[-3000:]
    assert "2 process" in rm.stderr
    ppo = _torchrun(["-m", "alignloop.cli", "train-ppo", "--policy", str(model), "--reward-model",
                     str(tmp_path / "rm"), "--prompts", str(tmp_path / "prompts.jsonl"),
                     "--out", str(tmp_path / "ppo"), "--max-steps", "2", "--batch-size", "2",
                     "--minibatch-size", "2", "--max-new-tokens", "8", "--save-every", "0",
                     "--mixed-precision", "no"], FSDP_ENV)  # fmt: skip
    assert ppo.returncode == 0, ppo.stderr[-3000:]
    assert "on 2 process" in ppo.stderr
