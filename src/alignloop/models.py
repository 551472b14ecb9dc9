"""Models of the loop: loading tokenizers and reward models, building tiny LMs.

- `load_tokenizer`: any Hugging Face tokenizer, with a pad token guaranteed.
- `RewardModel`: a sequence-classification model with one output, read at the right
  token whatever the padding, with the normalization learned after training.
- `build_tiny_causal_lm`: the tiny Llama the demo trains from scratch.
- `load_policy`, `add_lora`, `frozen_copy`: the policy SFT and PPO tune and PPO's
  reference; `ValueModel` and `PolicyWithValueHead`: PPO's two kinds of critic.
- `ResponseBatch`, `response_logits`, `response_logprobs`: the one forward pass that
  gives per-token log-probabilities of a response (PPO's rollout, update and
  reference, evaluation's KL); `prompt_token_limit`: how long a prompt may be.

This is the module where torch and transformers are imported at the top.

The tiny model is an ordinary `LlamaForCausalLM` saved as an ordinary Hugging Face
directory, so every stage downstream loads it with `AutoModelForCausalLM` exactly as
it would a real model; only its size makes it fit a laptop CPU.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignloop.chat import encode, render_text, set_chat_template
from alignloop.losses import logprobs_from_logits
from alignloop.schema import join_text

__all__ = [
    "PackedResponses",
    "ResponseBatch",
    "RewardModel",
    "block_mask",
    "fill_rows",
    "build_tiny_causal_lm",
    "continuation_ids",
    "disable_dropout",
    "last_token_index",
    "add_lora",
    "load_tokenizer",
    "pad_left",
    "pad_right",
    "parse_head_weights",
    "position_ids_from_mask",
    "prompt_token_limit",
    "read_user_weights",
    "response_logits",
    "response_logprobs",
    "save_pretrained",
    "tokenize_keep_end",
    "tokenize_prompts",
    "tokenizer_appends_eos",
]

NORMALIZATION_KEY = "alignloop_reward_normalization"  # in a reward model's config.json
APPEND_EOS_KEY = "alignloop_reward_appends_eos"  # in a reward model's config.json
# The part of the normalization already in the head's weights (saved folders since issue
# 15): the head outputs folded_gain * raw + folded_bias. Absent: (1, 0), nothing folded.
FOLDED_KEY = "alignloop_reward_normalization_in_head"
# A personal (factorized) reward model's users, issue 16: {"users": {labeler: [D floats]},
# "default": [D floats]}, weights over its D normalized features (`head_scores`).
PERSONAL_KEY = "alignloop_personal"


def build_tiny_causal_lm(
    tokenizer: PreTrainedTokenizerBase,
    *,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 256,
    seed: int = 0,
) -> LlamaForCausalLM:
    """A randomly initialised Llama sized for `tokenizer`'s vocabulary.

    The same seed gives the same weights; torch's global generator is left as it was
    (the initialisation runs under `torch.random.fork_rng`). The config and the
    generation config carry the tokenizer's pad/bos/eos ids, so `generate` stops at
    `</s>` and pads with `<pad>` without being told.
    """
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        intermediate_size=intermediate_size or 4 * hidden_size,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=True,  # fewer parameters; the vocabulary is small anyway
        **special,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(**special)
    return model


def save_pretrained(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | Path
) -> Path:
    """Save model and tokenizer into one Hugging Face directory (made if absent)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --- loading: one helper for every model and tokenizer -------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """How models are read from the hub or a directory (`train.base_config.ModelOptions`
    gives them as flags): the same for every loader."""

    revision: str | None = None  # a hub branch, tag or commit
    trust_remote_code: bool = False  # run a hub repository's own modelling code
    dtype: str = "float32"  # a torch dtype's name, or "auto": the checkpoint's own
    attn_implementation: str | None = None  # eager, sdpa, flash_attention_2, ...
    chat_template: str | Path | None = None  # a Jinja file: the tokenizers' chat template

    @classmethod
    def of(cls, config: object | None) -> LoadOptions:
        """The options of a config that has them (any `ModelOptions`), else the defaults."""
        if config is None or isinstance(config, LoadOptions):
            return config or cls()
        return cls(**{f: getattr(config, f, getattr(cls, f)) for f in cls.__dataclass_fields__})

    def torch_dtype(self) -> torch.dtype | str:
        return "auto" if self.dtype == "auto" else getattr(torch, self.dtype)


def model_reference(name_or_path: str | Path) -> str:
    """How a saved file names a model so that it resolves from any working directory:
    a local directory's absolute path, else the hub id as given."""
    path = Path(name_or_path).expanduser()
    return str(path.resolve()) if path.exists() else str(name_or_path)


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _looks_local(name: str) -> bool:
    """A name that cannot be a hub id ("org/name" or "name") is meant as a path."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    if name.startswith((".", "/", "~")) or "\\" in name:
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


_hub_reachable: dict[str, bool] = {}


def _hub_is_reachable(timeout: float = 3.0) -> bool:
    """One TCP connection to the hub's endpoint (HF_ENDPOINT), remembered: without a
    network huggingface_hub retries each file for about a minute before it fails."""
    import socket
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    url = urlsplit(constants.ENDPOINT)
    if url.hostname not in _hub_reachable:
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=timeout).close()
            _hub_reachable[url.hostname] = True
        except OSError:
            _hub_reachable[url.hostname] = False
    return _hub_reachable[url.hostname]


def _cached(name: str, revision: str | None) -> bool:
    """Whether the local Hugging Face cache holds `name`'s config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(name, "config.json", revision=revision)
    except Exception:  # a malformed cache entry: say it is not there
        return False
    return isinstance(found, str)


def from_pretrained(loader, name_or_path: str | Path, what: str, options=None, **kwargs):
    """`loader.from_pretrained(name_or_path, **kwargs)` with the load options, where
    every way it can fail is one line (a `ConfigError`) saying what was looked for,
    where, and what to do: a local directory that does not exist, a hub id without a
    network (found fast, not after a minute of retries) or not in the offline cache,
    a repository that needs --trust-remote-code. `what` names the model ("policy",
    "reward model", ...). kwargs "dtype"/"attn_implementation" default to the options'."""
    from alignloop.config import ConfigError

    options = LoadOptions.of(options)
    name = str(name_or_path)
    path = Path(name).expanduser()
    local = path.is_dir()
    if not local and path.exists():
        raise ConfigError(f"{what} {name!r}: {path.resolve()} is a file, not a model directory")
    if not local and _looks_local(name):
        raise ConfigError(
            f"{what} {name!r}: no such directory ({path.resolve()}); give a model directory "
            "(one with config.json) or a hub id such as 'gpt2'"
        )
    if not local and not _offline() and not _hub_is_reachable():
        if not _cached(name, options.revision):
            raise ConfigError(
                f"{what} {name!r}: could not reach the Hugging Face hub for {name!r} (no "
                "network?) and it is not in the local cache: use a local path, or set "
                "HF_HUB_OFFLINE=1 to use the local cache"
            )
        kwargs["local_files_only"] = True  # in the cache: no minute of retries
    if not local and _offline():
        kwargs["local_files_only"] = True
    if options.revision is not None:
        kwargs.setdefault("revision", options.revision)
    if options.trust_remote_code:
        kwargs.setdefault("trust_remote_code", True)
    try:
        return loader.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        if "trust_remote_code" in str(e):
            raise ConfigError(
                f"{what} {name!r} needs its repository's own code: pass --trust-remote-code "
                "if you trust it"
            ) from e
        if not isinstance(e, OSError):
            raise
        if not local and kwargs.get("local_files_only"):
            raise ConfigError(
                f"{what} {name!r}: not a local directory and not in the local Hugging Face "
                "cache (HF_HUB_OFFLINE is set, or the hub cannot be reached): download it "
                "once with a network, or give a local path"
            ) from e
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{what} {name!r}: {first}") from e


@contextlib.contextmanager
def _quiet_transformers():
    """transformers' logging at errors only, for the duration."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def _model_kwargs(options: LoadOptions, **kwargs) -> dict:
    """dtype and attention kernel for a model's `from_pretrained` (not a tokenizer's)."""
    kwargs.setdefault("dtype", options.torch_dtype())
    if options.attn_implementation is not None:
        kwargs.setdefault("attn_implementation", options.attn_implementation)
    return kwargs


# --- tokenizers and small tensor helpers ---------------------------------------------


def load_tokenizer(
    name_or_path: str | Path, *, options: LoadOptions | object | None = None, what="tokenizer"
) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory or a hub id, with a pad token: many causal
    LMs ship none, and their EOS serves (positions are read from attention masks,
    never from the pad id, so EOS doubling as pad changes nothing). `options`: the
    revision and --trust-remote-code (`LoadOptions`, or a config that has them), and
    --chat-template, which sets or replaces the tokenizer's chat template."""
    tokenizer = from_pretrained(AutoTokenizer, name_or_path, what, options)
    chat_template = LoadOptions.of(options).chat_template
    if chat_template is not None:
        set_chat_template(tokenizer, chat_template)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{name_or_path}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenize_keep_end(
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    max_length: int,
    *,
    append_eos: bool = False,
) -> tuple[list[list[int]], int]:
    """Token ids of each text, cut from the START to at most `max_length` tokens: the
    end of a prompt (where the response starts) and of a completion (where the reward
    is read) matter most. The tokenizer cuts, so special tokens (BOS, [CLS] ... [SEP])
    stay, and never twice (`chat.encode`). `append_eos` ends every row with the EOS
    token (within `max_length`). Returns (ids, how many texts were cut)."""
    if append_eos:
        rows, cut = tokenize_keep_end(tokenizer, texts, max_length - 1)
        return [[*ids, tokenizer.eos_token_id] for ids in rows], cut
    rows = encode(tokenizer, texts)
    long = [i for i, ids in enumerate(rows) if len(ids) > max_length]
    if long:
        side = tokenizer.truncation_side
        tokenizer.truncation_side = "left"
        try:
            cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)
        finally:
            tokenizer.truncation_side = side
        for i, ids in zip(long, cut["input_ids"], strict=True):
            rows[i] = ids
    return rows, len(long)


def tokenizer_appends_eos(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer ends every text with its EOS itself (some do: T5's, a
    Llama tokenizer with add_eos_token, the reward-model folders alignloop saves)."""
    eos = tokenizer.eos_token_id
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return eos is not None and bool(ids) and ids[-1] == eos


def tokenize_prompts(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], max_length: int
) -> tuple[list[list[int]], int]:
    """Prompt rows for a policy to continue: `tokenize_keep_end` without the EOS that
    a tokenizer may append itself (a prompt ending in EOS is a finished text, and
    the response would follow an end). Returns (ids, how many texts were cut)."""
    if not tokenizer_appends_eos(tokenizer):
        return tokenize_keep_end(tokenizer, texts, max_length)
    rows, cut = tokenize_keep_end(tokenizer, texts, max_length + 1)
    eos = tokenizer.eos_token_id
    return [r[:-1] if r and r[-1] == eos else r for r in rows], cut


def continuation_ids(tokenizer: PreTrainedTokenizerBase, prompt: str, text: str) -> list[int]:
    """The tokens of `text` as the continuation of `prompt` (no special tokens), the
    way a policy samples them: the tokens of join_text(prompt, text) after the
    prompt's own, so a BPE tokenizer's leading-space token is there; or, when the
    tokenizer merges across the boundary, `text` tokenized alone."""
    if not text:
        return []
    bare = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    joined = tokenizer(join_text(prompt, text), add_special_tokens=False)["input_ids"]
    if joined[: len(bare)] == bare:
        return joined[len(bare) :]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _pad(
    rows: Sequence[Sequence[int]], pad_id: int, *, left: bool, multiple_of: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    width += -width % multiple_of
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if len(r):
            span = slice(width - len(r), width) if left else slice(0, len(r))
            input_ids[i, span] = torch.as_tensor(r, dtype=torch.long)
            attention_mask[i, span] = 1
    return input_ids, attention_mask


def pad_left(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (input_ids, attention_mask), both (N, L), padded on the left
    (prompts for generation: every row's last token is at the end)."""
    return _pad(rows, pad_id, left=True)


def pad_right(
    rows: Sequence[Sequence[int]], pad_id: int, *, multiple_of: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> (input_ids, attention_mask), both (N, L), padded on the right
    (what encoders with absolute positions need); L rounded up to `multiple_of`."""
    return _pad(rows, pad_id, left=False, multiple_of=multiple_of)


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, for left and right padding: (N, L) -> (N,)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (positions * attention_mask).argmax(-1)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens only, so a left-padded row gets the same
    positions as the row unpadded: (N, L) -> (N, L)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def _should_append_eos(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> bool:
    """A decoder reads its reward at the last token; ending every text with EOS gives
    it one fixed reading position, the token where the policy stops (the TL;DR
    reproductions read the reward at EOS). Not for encoders (they pool their first
    token) nor for tokenizers that add an EOS themselves."""
    if not hasattr(model, "score") or tokenizer.eos_token_id is None:
        return False
    return not tokenizer_appends_eos(tokenizer)


def _output_head(model: PreTrainedModel) -> nn.Linear | None:
    """The linear layer of `num_labels` outputs a sequence classifier ends in: a
    decoder's `score`, an encoder's `classifier` (or its `out_proj`: RoBERTa); None if
    it has none."""
    head = getattr(model, "score", None) or getattr(model, "classifier", None)
    if head is not None and not isinstance(head, nn.Linear):
        head = getattr(head, "out_proj", None)
    n = model.config.num_labels
    return head if isinstance(head, nn.Linear) and head.out_features == n else None


def _saved_heads(config) -> list[str] | None:
    """The head names of an alignloop reward model of several outputs (its config
    records a normalization or users, and `id2label` names the outputs); None for any
    other checkpoint (one output, a backbone, a classifier of someone else's labels)."""
    n = int(getattr(config, "num_labels", 1))
    ours = any(getattr(config, k, None) is not None for k in (NORMALIZATION_KEY, PERSONAL_KEY))
    if n < 2 or not ours:
        return None
    return [str(config.id2label[i]) for i in range(n)]


def _new_heads(model: PreTrainedModel, fresh: list[str]) -> None:
    """A model given outputs that are not its checkpoint's: a head of the same shape
    that was loaded (other names) starts random like one that was not, and the
    checkpoint's normalization, folded part and users (of other outputs) are dropped."""
    head = _output_head(model)
    if head is not None and not fresh:
        std = getattr(model.config, "initializer_range", 0.02)
        with torch.no_grad():
            nn.init.normal_(head.weight, std=std)
            if head.bias is not None:
                nn.init.zeros_(head.bias)
    for key in (NORMALIZATION_KEY, FOLDED_KEY, PERSONAL_KEY):
        setattr(model.config, key, None)


def _eos_appending(tokenizer: PreTrainedTokenizerBase, out: Path) -> PreTrainedTokenizerBase | None:
    """Save into `out` a copy of `tokenizer` whose post-processor appends the EOS after
    whatever it added before (BOS, say), and return it as reloaded from `out`; None,
    with nothing written, when the reloaded copy does not give exactly the same ids
    plus the EOS (a slow tokenizer, one that rebuilds its post-processor on load)."""
    import copy
    import tempfile

    from transformers import AutoTokenizer

    if not tokenizer.is_fast or tokenizer.eos_token_id is None:
        return None
    from tokenizers import processors

    eos, eos_id = tokenizer.eos_token, tokenizer.eos_token_id
    append = processors.TemplateProcessing(
        single=f"$A:0 {eos}:0", pair=f"$A:0 $B:1 {eos}:1", special_tokens=[(eos, eos_id)]
    )
    tok = copy.deepcopy(tokenizer)
    backend = tok.backend_tokenizer
    before = backend.post_processor
    backend.post_processor = append if before is None else processors.Sequence([before, append])
    samples = ["a", "the cat sat . tl;dr :", ""]
    expected = [[*ids, eos_id] for ids in tokenizer(samples)["input_ids"]]
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tok.save_pretrained(tmp)
        reloaded = AutoTokenizer.from_pretrained(tmp)
        if reloaded(samples)["input_ids"] != expected:
            return None
    tok.save_pretrained(out)
    return AutoTokenizer.from_pretrained(out)


def disable_dropout(model: nn.Module) -> None:
    """Dropout off everywhere: RLHF's models must score a text the same way twice."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


# --- a reward model's heads and a user's weights over them (issue 16) -------------------


def parse_head_weights(values: Sequence[str], field: str) -> dict[str, float]:
    """`NAME=W` strings (`--reward helpfulness=1.0 --reward harmlessness=0.5`) -> {name:
    weight}, in the order given. A malformed item, a weight that is not a finite number
    or a name given twice is a `ConfigError` naming `field` (the flag or config key)."""
    import math

    from alignloop.config import ConfigError

    weights: dict[str, float] = {}
    for value in values:
        name, sep, number = str(value).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"{field} {value!r}: expected NAME=WEIGHT, e.g. helpfulness=1.0")
        try:
            weight = float(number)
        except ValueError:
            weight = math.nan
        if not math.isfinite(weight):
            raise ConfigError(f"{field} {value!r}: the weight {number.strip()!r} is not a number")
        if name in weights:
            raise ConfigError(f"{field} {value!r}: {name!r} is given twice")
        weights[name] = weight
    return weights


def read_user_weights(path: str | Path, field: str = "--user-weights") -> dict[str, float]:
    """A weights file's {head name: weight}: JSON `{"user": NAME, "weights": {head:
    float}, ...}` (what `alignloop personal fit` writes; other keys are kept for people
    and ignored here). Every failure is one `ConfigError` naming `field` and the file."""
    import json
    import math

    from alignloop.config import ConfigError

    where = f"{field} {path}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{where}: not a JSON weights file ({e})") from None
    weights = data.get("weights") if isinstance(data, dict) else None
    if not isinstance(weights, dict) or not weights:
        raise ConfigError(f'{where}: expected {{"user": NAME, "weights": {{HEAD: WEIGHT, ...}}}}')
    out: dict[str, float] = {}
    for name, weight in weights.items():
        ok = isinstance(weight, int | float) and not isinstance(weight, bool)
        if not ok or not math.isfinite(weight):
            raise ConfigError(f"{where}: weights[{name!r}]: {weight!r} is not a number")
        out[str(name)] = float(weight)
    return out


# --- reward model ---------------------------------------------------------------------


class RewardModel(nn.Module):
    """A reward for prompt + completion, from any HF sequence-classification backbone:
    one output (a scalar reward), or H named outputs ("heads", issue 16): one per
    criterion, or the D reward features of a personal (factorized) model, whose users
    are weight vectors over them.

    Decoder backbones (a `score` head over every token: Llama, Qwen, Mistral, GPT-2,
    ...) are read at the last real token, found from the attention mask, with
    positions counted over real tokens: the same score for left or right padding, and
    no dependence on the pad id (transformers' own pooling looks for the last token
    that is not the pad id, which goes wrong when pad == EOS ends the text).
    Encoder backbones (BERT, MiniLM, DeBERTa) pool their first token in their own
    classification head; they are fed right-padded rows.

    The normalization (gain, bias) learned after training, one pair per head, is
    recorded in the config and folded into the head's weights on save
    (`save_pretrained`), and the saved tokenizer appends the EOS a decoder reads its
    score at: plain `AutoModelForSequenceClassification` on the saved folder gives
    alignloop's scores, head by head (its logits (N, H), `config.id2label` naming them).
    A decoder's head has no bias in transformers (Llama, Qwen, GPT-2, ...), so there
    only the gain is folded and plain transformers' score is alignloop's minus the
    recorded bias (a constant); folders saved before keep gain and bias in the config
    only, and load as they did.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path,
        *,
        dtype=None,
        options=None,
        what="reward model",
        new_head: bool = True,
        heads: Sequence[str] | None = None,
    ) -> RewardModel:
        """Load a backbone or a trained reward model directory; dropout off.
        `options`: `LoadOptions` (or a config with them); `dtype` overrides theirs.

        A checkpoint without a one-output head (a causal LM, a bare encoder) gets a
        new, random one when `new_head` (training a reward model, starting a critic);
        otherwise (scoring) that is a `ConfigError` naming `--new-head`, since its
        scores would be noise.

        `heads`: names of the outputs wanted (at least two: `train-rm --heads criteria`
        or `personal`). A checkpoint whose outputs are not these (a backbone, a
        one-output reward model, other names) gets new, random ones (with `new_head`),
        and its recorded normalization is dropped. None: the checkpoint's own outputs,
        one unless it is an alignloop reward model with several."""
        from transformers import AutoConfig

        from alignloop.config import ConfigError

        options = LoadOptions.of(options)
        tokenizer = load_tokenizer(name_or_path, options=options, what=what)
        kwargs = _model_kwargs(options, num_labels=1, output_loading_info=True)
        names = [str(n) for n in heads] if heads is not None else None
        if names is not None and (len(names) < 2 or len(set(names)) < len(names)):
            raise ConfigError(f"{what}: heads {names}: give two or more different names")
        saved = _saved_heads(from_pretrained(AutoConfig, name_or_path, what, options))
        replace = names is not None and names != saved
        if replace and not new_head:
            raise ConfigError(
                f"{what} {str(name_or_path)!r}: its outputs are "
                f"{', '.join(saved) if saved else 'one reward'}, not {', '.join(names)}"
            )
        names = names if names is not None else saved
        if names is not None:
            del kwargs["num_labels"]  # id2label says how many (num_labels first: a warning)
            kwargs.update(
                id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)}
            )
            if replace:  # a one-output head, or another number of outputs: not theirs
                kwargs["ignore_mismatched_sizes"] = True
        if dtype is not None:
            kwargs["dtype"] = dtype
        with contextlib.nullcontext() if new_head else _quiet_transformers():
            # scoring: a missing head is this function's one-line error, not a load report
            model, info = from_pretrained(
                AutoModelForSequenceClassification, name_or_path, what, options, **kwargs
            )
        fresh = sorted({*info.get("missing_keys", ()), *map(str, info.get("mismatched_keys", ()))})
        if fresh and not new_head:
            arch = ", ".join(getattr(model.config, "architectures", None) or ["a backbone"])
            outputs = "one-output" if names is None else f"{len(names)}-output"
            raise ConfigError(
                f"{what} {str(name_or_path)!r} is not a reward model ({arch}; no trained "
                f"{outputs} head: {', '.join(fresh[:2])} would start random, and so would "
                "its scores): give a directory from `alignloop train-rm`, or pass --new-head "
                "to score with a new random head (a baseline only)"
            )
        if replace:
            _new_heads(model, fresh)
        if not new_head and getattr(model.config, NORMALIZATION_KEY, None) is None:
            warnings.warn(
                f"{what} {str(name_or_path)!r} was not trained by alignloop (no "
                f"{NORMALIZATION_KEY} in its config.json): its scores are used as they "
                "are, not normalized",
                stacklevel=2,
            )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        if getattr(model.config, APPEND_EOS_KEY, None) is None:
            setattr(model.config, APPEND_EOS_KEY, _should_append_eos(model, tokenizer))
        disable_dropout(model)
        return cls(model, tokenizer)

    @property
    def hf_model(self) -> PreTrainedModel:
        """The transformers model (inside its peft wrapper when LoRA is on)."""
        return self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model

    @property
    def n_heads(self) -> int:
        """How many outputs: 1 (a scalar reward) or H named ones."""
        return int(self.hf_model.config.num_labels)

    @property
    def head_names(self) -> list[str]:
        """The outputs' names: ["reward"] for one, else `config.id2label`'s (criterion
        names, or "feature_0".."feature_{D-1}" for a personal model)."""
        if self.n_heads == 1:
            return ["reward"]
        id2label = self.hf_model.config.id2label
        return [str(id2label[i]) for i in range(self.n_heads)]

    @property
    def reads_last_token(self) -> bool:
        return hasattr(self.hf_model, "score")

    @property
    def packing(self) -> Literal["prompts", "texts"] | None:
        """How several texts can share one row (`forward` with a block mask; issue 17),
        where the attention takes a custom 4D mask (sdpa, eager): "prompts", a decoder,
        each prompt once for all its completions (a completion sees its prompt and
        itself); "texts", a BERT-family encoder (BERT, MiniLM), texts end to end, each
        seeing only itself, its head read at its first token; None: one right-padded
        row per text (other encoders, other attention kernels)."""
        implementation = getattr(self.hf_model.config, "_attn_implementation", None)
        if implementation not in ("sdpa", "eager"):
            return None
        if self.reads_last_token:
            return "prompts"
        bert = getattr(self.hf_model, "bert", None)
        if self.hf_model.config.model_type == "bert" and bert is not None:
            return "texts"
        return None

    @property
    def packs_prompts(self) -> bool:
        """Whether a prompt's completions share its tokens in a row (decoders)."""
        return self.packing == "prompts"

    def token_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head's output at every position of a decoder backbone: (N, L) -> (N, L),
        or (N, L, H) for H outputs. (The value model of PPO starts from these.) A 4D
        boolean mask (N, 1, L, L) with explicit positions runs packed rows (see
        `forward`)."""
        hf = self.hf_model
        backbone = getattr(hf, hf.base_model_prefix)
        if position_ids is None:
            position_ids = position_ids_from_mask(attention_mask)
        if attention_mask.dim() == 4:
            attention_mask = packed_mask(hf, attention_mask)
        hidden = backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state  # (N, L, hidden)
        return hf.score(hidden).squeeze(-1)  # (N, L), or (N, L, H): squeeze leaves H > 1

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        read_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Raw (unnormalized) rewards: (N, L) -> (N,), or (N, H) for H outputs, read at
        each row's last token.

        Packed rows (`packing`): input_ids (R, L) holding several texts,
        attention_mask (R, 1, L, L) bool saying which token sees which, position_ids
        (R, L), read_at (N,) flat indices into (R, L) of each text's last token (a
        decoder) or first token (an encoder) -> (N,) or (N, H)."""
        if self.n_heads > 1:
            out = self.head_output(input_ids, attention_mask, position_ids, read_at)  # (N, H)
            gain, bias = self.folded
            if all(g == 1.0 for g in gain) and all(b == 0.0 for b in bias):
                return out
            gain_t, bias_t = (out.new_tensor(v) for v in (gain, bias))  # (H,) each
            return (out - bias_t) / gain_t
        gain, bias = self.folded
        out = self.head_output(input_ids, attention_mask, position_ids, read_at)
        return out if (gain, bias) == (1.0, 0.0) else (out - bias) / gain

    def head_output(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        read_at: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """What the head outputs where the reward is read, as plain transformers would
        give it: `forward` before the normalization folded in is taken out. (N,), or
        (N, H) for H outputs."""
        if read_at is not None and not self.reads_last_token:
            return self._first_token_output(input_ids, attention_mask, position_ids, read_at)
        if read_at is not None:
            scores = self.token_scores(input_ids, attention_mask, position_ids)  # (R, L[, H])
            return scores.flatten(0, 1)[read_at]  # (N[, H])
        if not self.reads_last_token:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits
            return logits[:, 0] if self.n_heads == 1 else logits  # (N,) or (N, H)
        scores = self.token_scores(input_ids, attention_mask)  # (N, L[, H])
        last = last_token_index(attention_mask)  # (N,)
        if scores.dim() == 2:
            return scores.gather(1, last[:, None]).squeeze(1)  # (N,)
        return scores[torch.arange(len(last), device=last.device), last]  # (N, H)

    def _first_token_output(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        read_at: torch.Tensor,
    ) -> torch.Tensor:
        """A BERT classifier's output for packed texts (`packing` "texts"): the encoder
        over the rows (R, L), each text seeing only itself with its own positions, then
        each text's first-token ([CLS]) state through the model's own pooler, dropout
        and classifier, as `BertForSequenceClassification` reads one text a row: (N,),
        or (N, H). The pooler also runs on each row's first token (R x hidden, unused)."""
        hf = self.hf_model
        hidden = hf.bert(
            input_ids=input_ids,
            attention_mask=packed_mask(hf, attention_mask),
            position_ids=position_ids,
        ).last_hidden_state  # (R, L, hidden)
        first = hidden.flatten(0, 1)[read_at][:, None]  # (N, 1, hidden)
        pooled = hf.bert.pooler(first) if hf.bert.pooler is not None else first[:, 0]
        logits = hf.classifier(hf.dropout(pooled))  # (N, H)
        return logits[:, 0] if self.n_heads == 1 else logits

    @property
    def appends_eos(self) -> bool:
        """Whether every text gets an EOS token, where a decoder reads its reward."""
        return bool(getattr(self.hf_model.config, APPEND_EOS_KEY, False))

    # normalization ---------------------------------------------------------------
    # One output: (gain, bias) floats, as since issue 15. H outputs: lists of H floats.

    @property
    def normalization(self) -> tuple[float, float] | tuple[list[float], list[float]]:
        """(gain, bias): normalized reward = gain * raw + bias; (1, 0) before training.
        Per head (lists) for several outputs."""
        norm = getattr(self.hf_model.config, NORMALIZATION_KEY, None) or {}
        if self.n_heads > 1:
            return self._per_head(norm.get("gain", 1.0)), self._per_head(norm.get("bias", 0.0))
        return float(norm.get("gain", 1.0)), float(norm.get("bias", 0.0))

    def set_normalization(self, gain, bias) -> None:
        """Record (gain, bias): floats for one output; a float or H of them (a list or
        a tensor) for several, one per head."""
        if self.n_heads > 1:
            gain, bias = self._per_head(gain), self._per_head(bias)
        setattr(self.hf_model.config, NORMALIZATION_KEY, {"gain": gain, "bias": bias})

    @property
    def folded(self) -> tuple[float, float] | tuple[list[float], list[float]]:
        """(gain, bias) already in the head: head output = gain * raw + bias."""
        folded = getattr(self.hf_model.config, FOLDED_KEY, None) or {}
        if self.n_heads > 1:
            return self._per_head(folded.get("gain", 1.0)), self._per_head(folded.get("bias", 0.0))
        return float(folded.get("gain", 1.0)), float(folded.get("bias", 0.0))

    @property
    def head_normalization(self) -> tuple[float, float] | tuple[list[float], list[float]]:
        """(gain, bias) that map the head's output to the normalized reward: (1, 0)
        for a fully folded head, the recorded normalization for an older folder."""
        gain, bias = self.normalization
        folded_gain, folded_bias = self.folded
        if self.n_heads > 1:
            scale = [g / f for g, f in zip(gain, folded_gain, strict=True)]
            shift = [b - s * f for b, s, f in zip(bias, scale, folded_bias, strict=True)]
            return scale, shift
        scale = gain / folded_gain
        return scale, bias - scale * folded_bias

    def _per_head(self, value) -> list[float]:
        """A recorded float or H of them as H floats."""
        if isinstance(value, torch.Tensor):
            value = value.tolist()
        if isinstance(value, int | float):
            return [float(value)] * self.n_heads
        values = [float(v) for v in value]
        if len(values) != self.n_heads:
            raise ValueError(f"{len(values)} values for a reward model of {self.n_heads} heads")
        return values

    def fold_normalization(self, model: PreTrainedModel | None = None) -> bool:
        """Put the recorded normalization into the head's weights (of `model`, by
        default this one's transformers model): the gain always, the bias where the
        head has one; head by head for several outputs. Returns whether anything was
        folded."""
        model = model if model is not None else self.hf_model
        head = _output_head(model)
        if head is None or getattr(model.config, NORMALIZATION_KEY, None) is None:
            return False
        gain, bias = self.normalization
        folded_gain, folded_bias = self.folded
        if (gain, bias) == (folded_gain, folded_bias):
            return False
        if self.n_heads > 1:
            return self._fold_heads(model, head, gain, bias, folded_gain, folded_bias)
        scale = gain / folded_gain  # head output o = fg * raw + fb -> gain * raw + new bias
        with torch.no_grad():
            head.weight.mul_(scale)
            if head.bias is not None:
                head.bias.copy_(scale * (head.bias - folded_bias) + bias)
        new_bias = bias if head.bias is not None else 0.0
        setattr(model.config, FOLDED_KEY, {"gain": gain, "bias": new_bias})
        return True

    def _fold_heads(self, model, head: nn.Linear, gain, bias, folded_gain, folded_bias) -> bool:
        """`fold_normalization` of H outputs: row h of the head's weight (H, hidden) and
        bias (H,) take head h's gain and bias."""
        as_t = lambda v: torch.tensor(v, dtype=head.weight.dtype, device=head.weight.device)  # noqa: E731
        scale = as_t([g / f for g, f in zip(gain, folded_gain, strict=True)])  # (H,)
        with torch.no_grad():
            head.weight.mul_(scale[:, None])  # (H, hidden)
            if head.bias is not None:
                head.bias.copy_(scale * (head.bias - as_t(folded_bias)) + as_t(bias))
        new_bias = bias if head.bias is not None else [0.0] * len(bias)
        setattr(model.config, FOLDED_KEY, {"gain": gain, "bias": new_bias})
        return True

    # users: weights over the heads ---------------------------------------------------

    @property
    def users(self) -> dict[str, list[float]]:
        """A personal model's users (the labelers it was trained on): name -> D weights
        over the normalized features (`head_scores`); {} for any other model."""
        personal = getattr(self.hf_model.config, PERSONAL_KEY, None) or {}
        return {str(k): [float(x) for x in v] for k, v in personal.get("users", {}).items()}

    @property
    def default_weights(self) -> dict[str, float] | None:
        """The combination `score` uses when given none: {"reward": 1.0} for one
        output, a personal model's "average user" (the mean of its users' weights),
        None for a criteria model (its heads do not add up by themselves)."""
        if self.n_heads == 1:
            return {"reward": 1.0}
        personal = getattr(self.hf_model.config, PERSONAL_KEY, None) or {}
        if personal.get("default") is None:
            return None
        return dict(zip(self.head_names, map(float, personal["default"]), strict=True))

    def user_weights(self, name: str) -> dict[str, float]:
        """A user's weights over the heads (`--user NAME`): a ConfigError naming the
        model's users when it has no such user, or none (not a personal model)."""
        from alignloop.config import ConfigError

        users = self.users
        if not users:
            raise ConfigError(
                f"--user {name}: the reward model has no users (only `train-rm --heads "
                "personal` gives users); weigh its heads with --reward NAME=W"
            )
        if name not in users:
            known = sorted(users)
            more = f", ... ({len(known)} in all)" if len(known) > 8 else ""
            raise ConfigError(
                f"--user {name}: not a user of the reward model (its users: "
                f"{', '.join(known[:8])}{more}); a new user: --user-weights FILE"
            )
        return dict(zip(self.head_names, users[name], strict=True))

    def resolve_weights(
        self,
        *,
        reward: Sequence[str] | dict[str, float] | None = None,
        user: str | None = None,
        user_weights: str | Path | None = None,
    ) -> dict[str, float] | None:
        """The combination of heads a command was given: `--reward NAME=W` items (or
        their mapping), `--user NAME`, or `--user-weights FILE`; at most one of them.
        Checked against the heads (a ConfigError naming the flag and the heads).
        None when none was given: `score` then uses `default_weights`."""
        from alignloop.config import ConfigError

        given = [f for f, v in (("--reward", reward), ("--user", user),
                                ("--user-weights", user_weights)) if v]  # fmt: skip
        if len(given) > 1:
            raise ConfigError(f"{' and '.join(given)}: give one of them (each is a combination)")
        if reward:
            weights = reward if isinstance(reward, dict) else parse_head_weights(reward, "--reward")
            self.weight_vector(weights, field="--reward")
            return {str(k): float(v) for k, v in weights.items()}
        if user:
            return self.user_weights(user)
        if user_weights:
            weights = read_user_weights(user_weights)
            self.weight_vector(weights, field=f"--user-weights {user_weights}")
            return weights
        return None

    def weight_vector(self, weights: dict[str, float] | None, field: str = "--reward"):
        """(H,) float32 weights of the heads in order: `weights` (head name -> weight,
        missing heads 0), or `default_weights` for None. An unknown name, or None for
        a model without a default (a criteria model), is a ConfigError naming `field`
        and the heads."""
        from alignloop.config import ConfigError

        names = self.head_names
        if weights is None:
            weights = self.default_weights
            if weights is None:
                raise ConfigError(
                    f"the reward model has several heads ({', '.join(names)}) and no default "
                    "combination: weigh them with --reward NAME=W (once per head that counts)"
                )
        unknown = [k for k in weights if k not in names]
        if unknown:
            raise ConfigError(
                f"{field}: the reward model has no head {unknown[0]!r} (its heads: "
                f"{', '.join(names)})"
            )
        return torch.tensor([float(weights.get(n, 0.0)) for n in names])

    # scoring text ------------------------------------------------------------------

    @torch.no_grad()
    def _head_outputs(self, prompts, completions, batch_size: int, max_length: int):
        """The head's outputs for prompt + completion texts, float32 on the CPU: (N,)
        for one output, (N, H) for several."""
        pairs = zip(prompts, completions, strict=True)
        texts = [render_text(self.tokenizer, p, c) for p, c in pairs]
        rows, _ = tokenize_keep_end(self.tokenizer, texts, max_length, append_eos=self.appends_eos)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        device = next(self.parameters()).device
        raw = torch.empty(len(rows)) if self.n_heads == 1 else torch.empty(len(rows), self.n_heads)
        self.eval()
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            input_ids, attention_mask = pad_right(
                [rows[i] for i in chunk], self.tokenizer.pad_token_id
            )
            out = self.head_output(input_ids.to(device), attention_mask.to(device))
            raw[chunk] = out.float().cpu()  # the head's output (N,) or (N, H)
        return raw

    def _output_scale(self, normalized: bool):
        """(gain, bias) that map the head's output to a score, gain * output + bias:
        the normalized reward (`head_normalization`), or with `normalized=False` the
        training scale (the folded normalization undone). Floats for one output, lists
        of H for several."""
        if normalized:
            return self.head_normalization
        folded_gain, folded_bias = self.folded
        if self.n_heads > 1:
            gain = [1.0 / f for f in folded_gain]
            return gain, [-b / f for b, f in zip(folded_bias, folded_gain, strict=True)]
        return 1.0 / folded_gain, -folded_bias / folded_gain

    @torch.no_grad()
    def head_scores(
        self,
        prompts: list[str],
        completions: list[str],
        *,
        batch_size: int = 32,
        max_length: int = 512,
        normalized: bool = True,
    ) -> torch.Tensor:
        """Every head's reward of prompt + completion texts: (N, H) float32 on the CPU,
        normalized head by head (mean 0, std 1 on the training completions); (N, 1)
        for a one-output model. `normalized=False`: the training scale."""
        raw = self._head_outputs(prompts, completions, batch_size, max_length)
        raw = raw[:, None] if raw.dim() == 1 else raw  # (N, H)
        gain, bias = self._output_scale(normalized)
        return raw * torch.tensor(gain, dtype=raw.dtype) + torch.tensor(bias, dtype=raw.dtype)

    @torch.no_grad()
    def score(
        self,
        prompts: list[str],
        completions: list[str],
        *,
        batch_size: int = 32,
        max_length: int = 512,
        normalized: bool = True,
        weights: dict[str, float] | None = None,
    ) -> list[float]:
        """Rewards of prompt + completion texts (the prompt's start is cut when too
        long); a prompt may be a conversation, rendered with the chat template
        (`chat.render_text`). Batches are formed by length, so little padding.

        Several heads: sum_h weights[h] * head h's score (`head_scores`), `weights` a
        mapping head name -> weight (missing heads weigh 0), or None for the model's
        default (`default_weights`: a personal model's average user; a criteria model
        has none, a ConfigError naming the heads and `--reward NAME=W`)."""
        if self.n_heads > 1 or weights is not None:
            w = self.weight_vector(weights)  # (H,), checked before any forward pass
            scores = self.head_scores(prompts, completions, batch_size=batch_size,
                                      max_length=max_length, normalized=normalized)  # fmt: skip
            return (scores @ w).tolist()  # (N, H) @ (H,) -> (N,)
        raw = self._head_outputs(prompts, completions, batch_size, max_length)
        gain, bias = self._output_scale(normalized)
        if (gain, bias) == (1.0, 0.0):
            return raw.tolist()
        if gain == 1.0:
            return (raw + bias).tolist()
        return (gain * raw + bias).tolist()

    # training and saving -------------------------------------------------------------

    def prepare_for_training(
        self,
        *,
        lora_r: int = 0,
        lora_alpha: int = 16,
        lora_dropout: float = 0.0,
        gradient_checkpointing: bool = False,
    ) -> None:
        """LoRA adapters on every linear layer (the head stays fully trainable) when
        `lora_r` > 0; gradient checkpointing on request."""
        if gradient_checkpointing:
            self.hf_model.gradient_checkpointing_enable()
            self.hf_model.config.use_cache = False
        if lora_r > 0:
            self.model = add_lora(
                self.model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, task="SEQ_CLS"
            )
            if gradient_checkpointing:
                self.hf_model.enable_input_require_grads()

    def save_pretrained(self, out_dir: str | Path) -> Path:
        """An ordinary HF directory (LoRA adapters merged in) with the tokenizer that
        scores as alignloop does under plain transformers: the normalization folded
        into the head (`fold_normalization`), and, where alignloop appends an EOS to
        every text, a tokenizer that appends it itself (the config then says alignloop
        need not). A tokenizer that cannot be made to is saved as it is, with the
        config saying alignloop appends the EOS."""
        model = (
            self.model.merge_and_unload() if hasattr(self.model, "merge_and_unload") else self.model
        )
        self.fold_normalization(model)
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config = model.config
        saved = {k: getattr(config, k, None) for k in (APPEND_EOS_KEY, "pad_token_id")}
        tokenizer = _eos_appending(self.tokenizer, out) if self.appends_eos else None
        if tokenizer is None:
            self.tokenizer.save_pretrained(out)
        else:
            setattr(config, APPEND_EOS_KEY, False)  # the saved tokenizer appends it
            if config.pad_token_id == tokenizer.eos_token_id:
                # transformers reads a decoder's score at the last token that is not the
                # pad id, which would be the token before the EOS: without a pad id it
                # reads the last token (of one text at a time)
                config.pad_token_id = None
        try:
            model.save_pretrained(out)
        finally:
            for k, v in saved.items():
                setattr(config, k, v)
        return out


# --- policy, reference and value models ------------------------------------------------


def load_policy(
    name_or_path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    options=None,
    what="policy",
    adapter: str | Path | None = None,
    adapter_what: str = "--adapter",
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A causal LM to tune and its tokenizer (with a pad token); dropout off.
    `options`: `LoadOptions` (or a config with them); `dtype` overrides theirs.
    `adapter`: a saved peft adapter folder (train-ppo --save-adapter) put on the model,
    its base, frozen (`adapters.load_adapter`; its checks name `adapter_what`): the
    model returned is then a peft model, the base being its adapter off.

    float32 by default: transformers 5 loads a checkpoint in its own dtype ("auto",
    bf16 for most hub models), and small AdamW updates of bf16 weights round away."""
    from transformers import AutoModelForCausalLM

    from alignloop.adapters import ADAPTER_CONFIG, load_adapter, read_adapter_config

    if adapter is not None:
        read_adapter_config(adapter, adapter_what)  # before minutes of loading the base
        if (Path(name_or_path).expanduser() / ADAPTER_CONFIG).is_file():
            from alignloop.config import ConfigError

            raise ConfigError(
                f"{what} {name_or_path} is itself an adapter folder: give its base as {what} "
                f"and the adapter as {adapter_what}"
            )
    options = LoadOptions.of(options)
    tokenizer = load_tokenizer(name_or_path, options=options, what=what)
    kwargs = _model_kwargs(options)
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = from_pretrained(AutoModelForCausalLM, name_or_path, what, options, **kwargs)
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    disable_dropout(model)
    if adapter is not None:
        model = load_adapter(model, adapter, base=name_or_path, what=adapter_what)
    return model, tokenizer


def add_lora(
    model: PreTrainedModel,
    *,
    r: int,
    alpha: int = 16,
    dropout: float = 0.0,
    task: str = "CAUSAL_LM",
):
    """LoRA adapters on every linear layer (peft) of a causal LM, or with
    `task="SEQ_CLS"` of a sequence classifier (whose head peft keeps fully trainable)."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType[task],
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules="all-linear",
    )
    return get_peft_model(model, config)


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy that never trains: the reference policy of PPO's KL penalty."""
    import copy

    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def _combined_head(
    reward_model: RewardModel, weights: dict[str, float] | None, old: nn.Linear, head: nn.Linear
) -> None:
    """Set the one-output `head` to the combination sum_h w_h * normalized head h of the
    H-output head `old`: normalized h = g_h * (W_h . x + c_h) + b_h (`head_normalization`),
    so the weight is sum_h w_h g_h W_h and the bias sum_h w_h (g_h c_h + b_h)."""
    w = reward_model.weight_vector(weights).to(old.weight)  # (H,)
    gain, bias = (torch.tensor(v).to(old.weight) for v in reward_model.head_normalization)
    wg = w * gain  # (H,)
    old_bias = old.bias if old.bias is not None else torch.zeros_like(w)
    with torch.no_grad():
        head.weight.copy_((wg @ old.weight)[None])  # (1, hidden)
        head.bias.copy_((wg * old_bias.to(w)).sum() + (w * bias).sum())


class ValueModel(nn.Module):
    """PPO's critic as a separate model: a decoder reward model's head read at every
    token. Starting the critic from the reward model is what the TL;DR reproductions
    do (Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO").

    The reward model's normalization (gain, bias) is folded into the head (where the
    saved folder has not done so already), so the first values are on the scale of
    the normalized rewards PPO sees."""

    def __init__(self, reward_model: RewardModel, weights: dict[str, float] | None = None):
        super().__init__()
        if not reward_model.reads_last_token:
            raise ValueError(
                "the critic can start only from a decoder reward model (one with a "
                "per-token `score` head); use --critic policy-head or --value-model"
            )
        hf = reward_model.hf_model
        old = hf.score
        head = nn.Linear(
            old.in_features, 1, bias=True, dtype=old.weight.dtype, device=old.weight.device
        )
        if reward_model.n_heads > 1:
            _combined_head(reward_model, weights, old, head)
            hf.config.num_labels = 1  # one output now: the combination's
            setattr(hf.config, PERSONAL_KEY, None)
        else:
            gain, bias = reward_model.head_normalization  # (1, 0) where already in the head
            with torch.no_grad():
                head.weight.copy_(gain * old.weight)
                old_bias = old.bias if old.bias is not None else torch.zeros(1)
                head.bias.copy_(gain * old_bias.to(head.bias) + bias)
        hf.score = head
        reward_model.set_normalization(1.0, 0.0)
        setattr(hf.config, FOLDED_KEY, None)
        self.reward_model = reward_model

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | Path, *, dtype=None, options=None, what="value model",
        weights: dict[str, float] | None = None,
    ) -> ValueModel:  # fmt: skip
        """From a reward model directory, or from any decoder checkpoint (a new head).
        float32 unless `options` or `dtype` say otherwise. A reward model of several
        heads starts the critic from their combination by `weights` (None: the
        model's default, `RewardModel.default_weights`)."""
        return cls(RewardModel.from_pretrained(name_or_path, dtype=dtype, options=options,
                                               what=what), weights)  # fmt: skip

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Values at every position: (N, L) -> (N, L); packed rows take a 4D mask and
        their positions (`PackedResponses`)."""
        return self.reward_model.token_scores(input_ids, attention_mask, position_ids)


class PolicyWithValueHead(nn.Module):
    """A causal LM with a linear value head on its last hidden state: one backbone
    pass gives logits and values (the shared critic of lm-human-preferences). The
    head starts at zero, so the first values are 0 rather than noise."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy
        config = policy.config.get_text_config()
        self.value_head = nn.Linear(config.hidden_size, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        logits_to_keep: int = 0,
        read_at: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of the last `logits_to_keep` positions (N, K, V), values (N, L)).
        Packed rows (`PackedResponses`: a 4D mask, `read_at` (B, T)): both read at
        `read_at` only, (B, T, V) and (B, T)."""
        if read_at is not None:
            logits, hidden = packed_logits_and_hidden(
                self.policy, input_ids, attention_mask, position_ids, read_at
            )
            return logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)
        out = self.policy(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            logits_to_keep=logits_to_keep,
            output_hidden_states=True,
        )
        hidden = out.hidden_states[-1]  # (N, L, H), after the final norm
        return out.logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1)


def prompt_token_limit(policy: nn.Module, max_prompt_length: int, max_new_tokens: int) -> int:
    """The most prompt tokens that leave room for `max_new_tokens` in the policy's
    context (`max_position_embeddings`, when its config has one), at most
    `max_prompt_length`. PPO and evaluation cut their prompts to it."""
    from alignloop.config import ConfigError

    hf = policy.policy if isinstance(policy, PolicyWithValueHead) else policy
    context = getattr(hf.config.get_text_config(), "max_position_embeddings", None)
    if context is None:
        return max_prompt_length
    if context - max_new_tokens < 1:
        raise ConfigError(
            f"--max-new-tokens {max_new_tokens} leaves no room for a prompt in the "
            f"policy's context of {context} tokens"
        )
    return min(max_prompt_length, context - max_new_tokens)


# --- packed rows: several sequences in one row, none of them padded -------------------


def fill_rows(lengths: list[int], capacity: int | None = None) -> list[list[int]]:
    """Blocks into as few rows of `capacity` tokens (default: the longest block) as
    hold them (first fit, longest first): the padding of one row per prompt, mostly
    gone. Returns block indices per row."""
    capacity = max(max(lengths), capacity or 0)
    rows: list[list[int]] = []
    room: list[int] = []
    for b in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for r, free in enumerate(room):
            if lengths[b] <= free:
                rows[r].append(b)
                room[r] -= lengths[b]
                break
        else:
            rows.append([b])
            room.append(capacity - lengths[b])
    return rows


def block_mask(
    block_id: torch.Tensor, segment: torch.Tensor, *, causal: bool = True
) -> torch.Tensor:
    """Who sees whom in packed rows: block_id (R, L) (-1 on padding) and segment (R, L)
    (0 a prompt's shared tokens, i its text i) -> (R, 1, L, L) bool, True where query q
    may attend to key k: causal (a decoder; `causal=False`: an encoder, both ways), the
    same block, and k shared or in q's own text. A padding position sees itself (an
    empty row would make the softmax NaN)."""
    L = block_id.shape[1]
    bq, bk = block_id[:, :, None], block_id[:, None, :]  # (R, L, 1), (R, 1, L)
    sq, sk = segment[:, :, None], segment[:, None, :]
    allowed = (bk >= 0) & (bk == bq) & ((sk == 0) | (sk == sq))  # (R, L, L)
    if causal:
        allowed &= torch.ones(L, L, dtype=torch.bool).tril()
    return (allowed | torch.eye(L, dtype=torch.bool))[:, None]


def packed_mask(model: nn.Module, mask: torch.Tensor) -> torch.Tensor:
    """A 4D boolean mask (R, 1, L, L) as `model`'s attention takes it: sdpa reads the
    booleans, eager attention adds its mask to the scores (0 where allowed, the
    dtype's minimum elsewhere)."""
    config = getattr(model, "config", None)
    if getattr(config, "_attn_implementation", None) != "eager":
        return mask
    dtype = next(model.parameters()).dtype
    blocked = torch.zeros(mask.shape, dtype=dtype, device=mask.device)
    return blocked.masked_fill(~mask, torch.finfo(dtype).min)


@dataclass
class PackedResponses:
    """A `ResponseBatch` with its B (prompt, response) sequences laid end to end in R
    rows (first fit, longest first: `fill_rows`, at the row length of 1 to 3 times the
    longest sequence that leaves the fewest positions: rows as long as the longest
    alone would leave sequences of alike lengths one to a row, padded as before), no
    padding inside a sequence; each sequence sees only itself (`block_mask`) and has
    its own positions from 0, so every output equals the padded batch's (issue 17)."""

    input_ids: torch.Tensor  # (R, L)
    attention_mask: torch.Tensor  # (R, 1, L, L) bool
    position_ids: torch.Tensor  # (R, L)
    # (B, T) flat indices into R x L of the position whose output predicts response
    # token t (the state before it); 0 where the response is padding (read, then masked)
    read_at: torch.Tensor
    real: int  # real tokens in the rows

    @classmethod
    def of(cls, batch: ResponseBatch, pad_id: int = 0) -> PackedResponses:
        q_len = batch.query_mask.sum(1).tolist()  # (B,) real prompt tokens, left-padded
        t_len = batch.response_mask.sum(1).long().tolist()  # (B,) real response tokens
        Q, T = batch.query_ids.shape[1], batch.response_ids.shape[1]
        lengths = [q + t for q, t in zip(q_len, t_len, strict=True)]
        rows = _fewest_positions(lengths)
        L = max(sum(lengths[b] for b in row) for row in rows)
        device = batch.query_ids.device
        input_ids = torch.full((len(rows), L), pad_id, dtype=torch.long, device=device)
        block_id = torch.full((len(rows), L), -1, dtype=torch.long)  # -1: padding
        position_ids = torch.zeros((len(rows), L), dtype=torch.long)
        read_at = torch.zeros((len(lengths), T), dtype=torch.long)
        for r, row in enumerate(rows):
            col = 0
            for b in row:
                q, t = q_len[b], t_len[b]
                span = slice(col, col + q + t)
                input_ids[r, col : col + q] = batch.query_ids[b, Q - q :]
                input_ids[r, col + q : col + q + t] = batch.response_ids[b, :t]
                block_id[r, span] = b
                position_ids[r, span] = torch.arange(q + t)
                # response token j is predicted at the sequence's position q - 1 + j
                read_at[b, :t] = r * L + col + q - 1 + torch.arange(t)
                col += q + t
        segment = torch.zeros_like(block_id)  # one text per block
        return cls(
            input_ids=input_ids,
            attention_mask=block_mask(block_id, segment).to(device),
            position_ids=position_ids.to(device),
            read_at=read_at.to(device),
            real=sum(lengths),
        )


def _fewest_positions(lengths: list[int]) -> list[list[int]]:
    """`fill_rows` with the row length, between the longest sequence and three times
    it, that leaves the fewest positions to compute (rows x their longest); the
    shorter rows on a tie (each token attends over its row)."""
    best = None
    for times in (1.0, 1.5, 2.0, 2.5, 3.0):
        rows = fill_rows(lengths, capacity=int(times * max(lengths)))
        cost = len(rows) * max(sum(lengths[b] for b in row) for row in rows)
        if best is None or cost < best[0]:
            best = (cost, rows)
    return best[1]


def _output_embeddings(model: nn.Module) -> nn.Module:
    """The LM head of a causal LM, through a DDP or PEFT wrapper."""
    return getattr(model, "module", model).get_output_embeddings()


def packed_logits_and_hidden(
    model: nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    position_ids: torch.Tensor,
    read_at: torch.Tensor,
):
    """A causal LM's pass over packed rows (a `PackedResponses`' tensors: (R, L) ids,
    (R, 1, L, L) block mask, (R, L) positions, (B, T) flat read positions): (logits
    (B, T, V) read at `read_at`, the hidden states there (B, T, H)). The LM head runs
    on those B x T positions only."""
    out = model(
        input_ids=input_ids,
        attention_mask=packed_mask(getattr(model, "module", model), attention_mask),
        position_ids=position_ids,
        logits_to_keep=1,  # the head runs below, on the positions read
        output_hidden_states=True,
    )
    hidden = out.hidden_states[-1].flatten(0, 1)[read_at]  # (B, T, H), after the norm
    return _output_embeddings(model)(hidden), hidden


# --- log-probabilities of a response ---------------------------------------------------


@dataclass
class ResponseBatch:
    """Prompts and the responses that follow them, for one forward pass. B rows, Q
    prompt tokens, T response tokens."""

    query_ids: torch.Tensor  # (B, Q) prompt tokens, left-padded
    query_mask: torch.Tensor  # (B, Q) 1 on real prompt tokens
    response_ids: torch.Tensor  # (B, T) response tokens, right-padded
    response_mask: torch.Tensor  # (B, T) 1 on response tokens (int or float)
    # run the passes on packed rows (`PackedResponses`): no padding computed, the
    # same outputs to float rounding (PPO's --pack-rows; issue 17)
    pack: bool = False

    @property
    def packed(self) -> PackedResponses:
        """The batch as packed rows (laid out once, on first use)."""
        if getattr(self, "_packed", None) is None:
            self._packed = PackedResponses.of(self)
        return self._packed

    def model_inputs(self) -> dict[str, torch.Tensor | int]:
        """The keyword arguments of a causal LM's forward over prompt + response."""
        input_ids = torch.cat([self.query_ids, self.response_ids], dim=1)  # (B, Q + T)
        attention_mask = torch.cat(
            [self.query_mask, self.response_mask.long()], dim=1
        )  # (B, Q + T)
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            # left padding: positions count real tokens only
            "position_ids": position_ids_from_mask(attention_mask),  # (B, Q + T)
            # The logits at positions Q-1 .. Q+T-2 predict the T response tokens: the
            # model's head is applied to those T + 1 positions only, not the prompt.
            "logits_to_keep": self.response_ids.shape[1] + 1,
        }

    def padding(self) -> torch.Tensor:
        """(padding positions, all positions) of a forward pass over this batch: (2,),
        float64, on the masks' device (sums of the masks, no sync: read it where it is
        logged). Padding share: padding[0] / padding[1] (issue 17). Packed: the rows'
        positions that hold no token."""
        if self.pack:
            p = self.packed
            total = float(p.input_ids.numel())
            return torch.tensor([total - p.real, total], dtype=torch.float64,
                                device=self.query_mask.device)  # fmt: skip
        real = self.query_mask.sum(dtype=torch.float64) + self.response_mask.sum(
            dtype=torch.float64
        )
        B, Q, T = *self.query_ids.shape, self.response_ids.shape[1]
        total = real.new_full((), float(B * (Q + T)))  # a fill on the device, no copy
        return torch.stack([total - real, total])


def response_logits(
    model: nn.Module, batch: ResponseBatch, temperature: float, *, value_head: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(logits (B, T, V) / temperature predicting each response token, values (B, T)
    of the state before it when `value_head`, else None). `value_head`: the model is a
    `PolicyWithValueHead`, whose one pass gives both."""
    if batch.pack:
        p = batch.packed
        if value_head:
            logits, values = model(p.input_ids, p.attention_mask, p.position_ids, read_at=p.read_at)
            return logits.float() / temperature, values.float()  # (B, T, V), (B, T)
        logits, _ = packed_logits_and_hidden(  # (B, T, V)
            model, p.input_ids, p.attention_mask, p.position_ids, p.read_at
        )
        return logits.float() / temperature, None
    inputs = batch.model_inputs()
    values = None
    if value_head:
        logits, values = model(**inputs)  # (B, T + 1, V), (B, Q + T)
        Q = batch.query_ids.shape[1]
        values = values[:, Q - 1 : -1].float()  # (B, T) V(s_t), read at the token before a_t
    else:
        logits = model(**inputs).logits  # (B, T + 1, V)
    # The same temperature as sampling, or the ratio compares different policies
    # (Huang et al. 2024, "N+ implementation details": "dividing logits by temperature").
    return logits[:, :-1].float() / temperature, values  # (B, T, V)


def response_logprobs(model: nn.Module, batch: ResponseBatch, temperature: float) -> torch.Tensor:
    """log pi(y_t | x, y_<t) of each response token at softmax(logits / T): (B, T)."""
    logits, _ = response_logits(model, batch, temperature)
    return logprobs_from_logits(logits, batch.response_ids)  # (B, T)


__all__ += [
    "LoadOptions",
    "PolicyWithValueHead",
    "ValueModel",
    "from_pretrained",
    "frozen_copy",
    "load_policy",
    "model_reference",
]
