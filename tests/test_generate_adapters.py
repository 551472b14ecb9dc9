"""Personalized policies (issue 16): LoRA adapters on one shared base, loaded alone or
several at once and switched per call; the checks that name a bad adapter folder; and
the round trip from train-ppo --save-adapter to generate --adapter."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from alignloop.adapters import ADAPTER_OFF, adapter_active, load_adapters
from alignloop.cli import main
from alignloop.config import ConfigError
from alignloop.generate import generate_completions, generate_file
from alignloop.io import read_records, write_records
from alignloop.models import add_lora, build_tiny_causal_lm, load_policy, model_reference
from alignloop.world import build_tokenizer, make_prompts

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}


pytestmark = pytest.mark.usefixtures("one_thread")


def make_adapter(base: Path, out: Path, seed: int, *, r: int = 4, base_name=None, **tiny) -> Path:
    """A LoRA adapter of `base` (or of a tiny model of other sizes `tiny`) whose B
    matrices are random (`seed`), not peft's zeros: an adapter that changes the model.
    Saved as train-ppo --save-adapter saves one (the base named absolutely)."""
    from alignloop.models import save_pretrained

    tokenizer = build_tokenizer()
    model = build_tiny_causal_lm(tokenizer, seed=0, **tiny) if tiny else load_policy(base)[0]
    peft = add_lora(model, r=r)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.5)
    peft.peft_config["default"].base_model_name_or_path = base_name or model_reference(base)
    return save_pretrained(peft, tokenizer, out)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny random base policy, two adapters of it (users "ann" and "bob") and six
    world prompts."""
    from alignloop.models import save_pretrained

    root = tmp_path_factory.mktemp("adapters")
    tokenizer = build_tokenizer()
    base = save_pretrained(
        build_tiny_causal_lm(tokenizer, seed=0, **TINY), tokenizer, root / "base"
    )
    paths = {"base": base, "prompts": root / "prompts.jsonl"}
    for seed, user in enumerate(("ann", "bob"), start=1):
        paths[user] = make_adapter(base, root / "users" / user, seed)
    write_records(paths["prompts"], make_prompts(6, seed=0))
    return paths


def _samples(policy, tokenizer, prompts, adapter=None) -> list[str]:
    torch.manual_seed(0)
    records = generate_completions(
        policy, tokenizer, prompts, k=2, max_new_tokens=8, batch_size=4, adapter=adapter
    )
    return [c.completion for c in records]


def _logits(policy, tokenizer, adapter=None) -> torch.Tensor:
    ids = torch.tensor([tokenizer("the weather was cold . tl;dr :")["input_ids"]])
    with adapter_active(policy, adapter), torch.inference_mode():
        return policy(input_ids=ids).logits  # (1, L, V)


def test_two_adapters_on_one_base_are_each_adapter_alone_and_off_is_the_base(tiny):
    prompts = read_records(tiny["prompts"], "prompt")
    base, tokenizer = load_policy(tiny["base"])
    alone = {user: load_policy(tiny["base"], adapter=tiny[user])[0] for user in ("ann", "bob")}
    expected = {user: _samples(model, tokenizer, prompts) for user, model in alone.items()}
    expected[ADAPTER_OFF] = _samples(base, tokenizer, prompts)
    # the three policies differ, so that equal samples below say something
    assert len({tuple(v) for v in expected.values()}) == 3

    shared = load_adapters(
        load_policy(tiny["base"])[0], {"ann": tiny["ann"], "bob": tiny["bob"]}, base=tiny["base"]
    )
    for name in ("bob", ADAPTER_OFF, "ann", "bob"):  # switched back and forth
        assert _samples(shared, tokenizer, prompts, adapter=name) == expected[name], name
        reference = base if name == ADAPTER_OFF else alone[name]
        assert torch.equal(_logits(shared, tokenizer, name), _logits(reference, tokenizer))
    assert _samples(shared, tokenizer, prompts) == expected["bob"]  # the last loaded is active


def test_adapter_active_restores_the_active_adapter_and_what_trains(tiny):
    model = load_adapters(load_policy(tiny["base"])[0], {"ann": tiny["ann"], "bob": tiny["bob"]})
    model.set_adapter("ann")  # peft: "ann" trains, "bob" is frozen
    trains = {n: p.requires_grad for n, p in model.named_parameters()}
    assert any(trains.values())
    for name in ("bob", ADAPTER_OFF):
        with adapter_active(model, name):
            pass
        assert model.active_adapter == "ann"
        assert {n: p.requires_grad for n, p in model.named_parameters()} == trains
    with pytest.raises(ValueError, match=r"no adapter 'carl': the model holds \['ann', 'bob'\]"):
        with adapter_active(model, "carl"):
            pass
    with pytest.raises(ValueError, match="holds no adapters"):
        with adapter_active(load_policy(tiny["base"])[0], "ann"):
            pass


def test_generate_command_with_an_adapter(tiny, tmp_path, capsys):
    out = tmp_path / "ann.jsonl"
    args = ["generate", "--policy", str(tiny["base"]), "--adapter", str(tiny["ann"]),
            "--prompts", str(tiny["prompts"]), "--out", str(out), "--k", "2",
            "--max-new-tokens", "8", "--batch-size", "4"]  # fmt: skip
    assert main(args) == 0
    records = read_records(out, "completion")
    assert {r.policy for r in records} == {f"{tiny['base']}+{tiny['ann']}"}
    policy, tokenizer = load_policy(tiny["base"], adapter=tiny["ann"])
    prompts = read_records(tiny["prompts"], "prompt")
    assert [r.completion for r in records] == _samples(policy, tokenizer, prompts)


def test_adapter_folder_errors(tiny, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    # checked before the base loads: this base does not even exist
    with pytest.raises(ConfigError, match=r"^--adapter .*empty: no adapter_config.json in it"):
        load_policy(tmp_path / "no-base", adapter=empty)
    with pytest.raises(ConfigError, match="--adapter .*missing: no such directory"):
        load_policy(tiny["base"], adapter=tmp_path / "missing")
    with pytest.raises(ConfigError, match="--policy .* is itself an adapter folder"):
        load_policy(tiny["ann"], adapter=tiny["bob"], what="--policy")
    reward = tmp_path / "rm-adapter"
    shutil.copytree(tiny["ann"], reward)
    config = json.loads((reward / "adapter_config.json").read_text())
    (reward / "adapter_config.json").write_text(json.dumps({**config, "task_type": "SEQ_CLS"}))
    with pytest.raises(ConfigError, match="an adapter of a SEQ_CLS model"):
        load_policy(tiny["base"], adapter=reward)
    # weights of another architecture recorded as made for this base
    wide = make_adapter(tiny["base"], tmp_path / "wide", 1, **{**TINY, "hidden_size": 64})
    with pytest.raises(ConfigError, match="--adapter .*wide: does not fit the base"):
        load_policy(tiny["base"], adapter=wide)


def test_an_adapter_of_another_base_fails_and_a_moved_base_warns(tiny, tmp_path):
    other = tmp_path / "sft"
    shutil.copytree(tiny["base"], other)
    with pytest.raises(ConfigError, match=r"was made for the base .*base .*not for .*sft"):
        load_policy(other, adapter=tiny["ann"], adapter_what="--adapter")
    moved = tmp_path / "elsewhere" / "base"  # the same folder name: a copy, or a move
    shutil.copytree(tiny["base"], moved)
    with pytest.warns(UserWarning, match="the same name in another place"):
        policy, tokenizer = load_policy(moved, adapter=tiny["ann"])
    prompts = read_records(tiny["prompts"], "prompt")
    here, _ = load_policy(tiny["base"], adapter=tiny["ann"])
    assert _samples(policy, tokenizer, prompts) == _samples(here, tokenizer, prompts)


REWARDS = """
def count_the(prompts, completions):
    return [sum(w in {"the", ",", "."} for w in c.split()) for c in completions]
"""


def test_a_ppo_adapter_generates_what_the_merged_tuned_policy_does(tiny, tmp_path):
    """train-ppo --lora-r 4 twice from one seed, once saving the merged policy and once
    only the adapter (--save-adapter): generate --policy BASE --adapter DIR samples what
    the merged policy samples (the same seed, the same token ids to float rounding: the
    logits agree to 1e-5), and not what the base samples."""
    (tmp_path / "rewards.py").write_text(REWARDS)
    common = ["train-ppo", "--policy", str(tiny["base"]), "--prompts", str(tiny["prompts"]),
              "--reward-fn", f"{tmp_path / 'rewards.py'}:count_the", "--max-new-tokens", "6",
              "--batch-size", "6", "--minibatch-size", "3", "--max-steps", "2", "--lora-r", "4",
              "--lr", "3e-2", "--critic", "policy-head", "--save-every", "0",
              "--sample-every", "0", "--mixed-precision", "no"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "merged")]) == 0
    assert main([*common, "--out", str(tmp_path / "adapter"), "--save-adapter"]) == 0
    assert not (tmp_path / "merged" / "adapter_config.json").exists()
    assert (tmp_path / "adapter" / "adapter_config.json").exists()

    outs = {}
    for name, policy, adapter in [("adapter", tiny["base"], tmp_path / "adapter"),
                                  ("merged", tmp_path / "merged", None),
                                  ("base", tiny["base"], None)]:  # fmt: skip
        outs[name] = tmp_path / f"{name}.jsonl"
        generate_file(policy, tiny["prompts"], outs[name], k=2, max_new_tokens=8, seed=3,
                      adapter=adapter, show_progress=False)  # fmt: skip
    texts = {n: [r.completion for r in read_records(p, "completion")] for n, p in outs.items()}
    assert texts["adapter"] == texts["merged"]
    assert texts["adapter"] != texts["base"]
    tuned, tokenizer = load_policy(tiny["base"], adapter=tmp_path / "adapter")
    merged, _ = load_policy(tmp_path / "merged")
    base, _ = load_policy(tiny["base"])
    assert torch.allclose(_logits(tuned, tokenizer), _logits(merged, tokenizer), atol=1e-5)
    assert (_logits(tuned, tokenizer) - _logits(base, tokenizer)).abs().max() > 1e-2
