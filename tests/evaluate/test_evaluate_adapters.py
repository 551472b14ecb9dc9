"""`alignloop eval` of personalized policies (issue 16): a LoRA adapter on --policy
(--adapter) and on --reference (--reference-adapter), e.g. a user's policy against
its base or against another user's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from alignloop.config import ConfigError
from alignloop.evaluate import EvalConfig, evaluate
from alignloop.io import read_records


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    """A LoRA adapter of tiny["policy"] with random B matrices (peft starts them at
    zero, an adapter that changes nothing), saved as train-ppo --save-adapter does."""
    from alignloop.models import add_lora, load_policy, model_reference, save_pretrained

    model, tokenizer = load_policy(tiny["policy"])
    peft = add_lora(model, r=4)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(1)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    peft.peft_config["default"].base_model_name_or_path = model_reference(tiny["policy"])
    return save_pretrained(peft, tokenizer, tmp_path_factory.mktemp("users") / "ann")


def _eval(tiny, out: Path, **kwargs) -> dict:
    config = EvalConfig(
        policy=str(tiny["policy"]), reference=str(tiny["policy"]), prompts=tiny["prompts"],
        out=out, reward_model=str(tiny["rm"]), max_new_tokens=6, batch_size=4, **kwargs,
    )  # fmt: skip
    return evaluate(config)


def _texts(path: Path) -> list[str]:
    return [c.completion for c in read_records(path, "completion")]


def _kl(out: Path) -> list[float]:
    rows = [json.loads(line) for line in (out / "scores.jsonl").read_text().splitlines()]
    return [r["kl"] for r in rows if r["policy"] == "policy"]


def test_an_adapter_against_its_base_and_the_base_against_it(tiny, adapter, tmp_path):
    """--adapter puts the adapter on the policy, --reference-adapter on the reference:
    swapping them swaps the two policies' samples (one seed); the KL is not zero."""
    tuned = _eval(tiny, tmp_path / "tuned", adapter=adapter)
    swapped = _eval(tiny, tmp_path / "swapped", reference_adapter=adapter, report=False)
    ours = tmp_path / "tuned" / "completions_policy.jsonl"
    base = tmp_path / "tuned" / "completions_reference.jsonl"
    assert _texts(ours) != _texts(base)
    assert _texts(tmp_path / "swapped" / "completions_policy.jsonl") == _texts(base)
    assert _texts(tmp_path / "swapped" / "completions_reference.jsonl") == _texts(ours)
    assert min(_kl(tmp_path / "tuned")) != 0.0 and min(_kl(tmp_path / "swapped")) != 0.0
    assert tuned["config"]["adapter"] == str(adapter)
    assert swapped["config"]["reference_adapter"] == str(adapter)
    subtitle = json.loads((tmp_path / "tuned" / "report_data.json").read_text())["subtitle"]
    assert subtitle.startswith(f"{tiny['policy']}+{adapter} against {tiny['policy']} on")


def test_an_adapter_against_itself_has_zero_kl(tiny, adapter, tmp_path):
    result = _eval(tiny, tmp_path, adapter=adapter, reference_adapter=adapter, report=False)
    assert _kl(tmp_path) == [0.0] * 10
    wr = result["win_rates"]["policy_vs_reference/reward_model"]
    assert (wr["ties"], wr["n"]) == (10, 10)


def test_reference_adapter_needs_a_reference(tiny, adapter, tmp_path):
    with pytest.raises(ConfigError, match="--reference-adapter needs --reference"):
        EvalConfig(policy=str(tiny["policy"]), prompts=tiny["prompts"], out=tmp_path,
                   reference_adapter=adapter)  # fmt: skip
    with pytest.raises(ConfigError, match="^--adapter .*: no adapter_config.json in it"):
        _eval(tiny, tmp_path / "out", adapter=tmp_path)
