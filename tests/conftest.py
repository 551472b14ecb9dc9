"""Shared fixtures: tiny record sets and the real HH sample from ../shared."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignloop.schema import Completion, Prompt, Ranking, parse_record

REPO = Path(__file__).resolve().parents[1]
HH_SAMPLE = REPO.parent / "shared" / "data" / "hh-harmless-dev.jsonl"


@pytest.fixture
def hh_path() -> Path:
    """The 1,600 real HH-RLHF harmless pairs shipped beside the repository."""
    if not HH_SAMPLE.exists():
        pytest.skip(f"{HH_SAMPLE} is absent (it lives in ../shared, outside the repository)")
    return HH_SAMPLE


@pytest.fixture
def one_thread():
    """One torch thread for the test, the previous number after it: tiny models gain
    nothing from more on a shared 2-core machine. A module asks for it in every test
    with `pytestmark = pytest.mark.usefixtures("one_thread")`."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def quick_demo(out: Path, *flags: str) -> Path:
    """`alignloop demo --quick --out OUT FLAGS` through the command line, on one torch
    thread (a quick demo's tiny models gain nothing from more), the previous number
    after it. Returns OUT."""
    import torch

    from alignloop.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["demo", "--quick", "--out", str(out), *flags]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture
def small_task() -> tuple[list[Prompt], list[Completion], list[Ranking]]:
    """Two prompts, three completions each, rankings by two labelers."""
    prompts = [
        Prompt(id="p1", prompt="summarize: the cat sat on the mat"),
        Prompt(id="p2", prompt="summarize: the dog ran in the park"),
    ]
    completions = [
        Completion(id=f"{p}-{j}", prompt_id=p, completion=f"{p} summary {j}")
        for p in ("p1", "p2")
        for j in "abc"
    ]
    rankings = [
        parse_record("ranking", r, f"rankings.jsonl:{i}")
        for i, r in enumerate(
            [
                {"prompt_id": "p1", "labeler": "ann", "criterion": "overall",
                 "ranking": [["p1-a"], ["p1-b", "p1-c"]]},
                {"prompt_id": "p1", "labeler": "bob", "criterion": "overall",
                 "ranking": [["p1-a"], ["p1-c"], ["p1-b"]]},
                {"prompt_id": "p2", "labeler": "ann", "criterion": "overall",
                 "ranking": [["p2-c"], ["p2-b"], ["p2-a"]]},
            ],
            start=1,
        )
    ]  # fmt: skip
    return prompts, completions, rankings


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    """A 1-layer Llama with a one-output score head and the world's tokenizer, saved
    as an ordinary Hugging Face directory (seeded: the same weights every time)."""
    import torch
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm, save_pretrained
    from alignloop.world import build_tokenizer

    tokenizer = build_tokenizer()
    config = build_tiny_causal_lm(tokenizer, hidden_size=32, num_layers=1, num_heads=4).config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = LlamaForSequenceClassification(config)
    return save_pretrained(model, tokenizer, tmp_path_factory.mktemp("tiny-rm"))


# --- a tiny chat model (issue 15): a byte-level BPE that adds BOS, with a template ---

STORIES = REPO.parent / "shared" / "models" / "stories260k"
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)  # starts with the BOS text, as Llama's templates do
CHAT_CORPUS = (
    "The sky is blue. The sky is green. What color is the sky? It is blue. It is green. "
    "The cat sat on the mat. Say something kind. You are a helpful assistant."
)


def build_chat_tokenizer(template: str | None = CHAT_TEMPLATE):
    """A byte-level BPE (any text tokenizes) trained here on one short corpus, with
    <s> added before every text (as Llama's tokenizers do), </s>, <pad>, role tokens
    and `template` as its chat template (None: a tokenizer without one)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "</s>", "<s>", "<unk>", "<|system|>", "<|user|>", "<|assistant|>",
                "<|tool|>"]  # fmt: skip
    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )  # fmt: skip
    core.train_from_iterator([CHAT_CORPUS] * 4, trainer)
    bos = [("<s>", core.token_to_id("<s>"))]
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=bos)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        unk_token="<unk>", padding_side="left", additional_special_tokens=specials[4:],
    )  # fmt: skip
    tokenizer.chat_template = template
    return tokenizer


@pytest.fixture(scope="session")
def chat_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny chat policy and reward model (same tokenizer and template), and the
    same policy whose tokenizer has no template ("plain"), as model directories."""
    import torch
    from transformers import LlamaForSequenceClassification

    from alignloop.models import build_tiny_causal_lm, save_pretrained

    root = tmp_path_factory.mktemp("chat-models")
    tokenizer = build_chat_tokenizer()
    size = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 256}
    policy = build_tiny_causal_lm(tokenizer, seed=0, **size)
    save_pretrained(policy, tokenizer, root / "policy")
    save_pretrained(policy, build_chat_tokenizer(None), root / "plain")
    config = policy.config
    config.num_labels = 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        rm = LlamaForSequenceClassification(config)
    rm.config.alignloop_reward_normalization = {"gain": 1.0, "bias": 0.0}  # as if trained
    save_pretrained(rm, tokenizer, root / "rm")
    return {"policy": root / "policy", "plain": root / "plain", "rm": root / "rm"}
