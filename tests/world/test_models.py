"""The tiny causal LM: built from the world's tokenizer, saved and loaded like a real one."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignloop.models import build_tiny_causal_lm, save_pretrained
from alignloop.world import build_tokenizer, make_prompts

TINY = {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "max_position_embeddings": 128}


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def test_same_seed_same_weights_and_global_rng_untouched(tokenizer):
    state = torch.random.get_rng_state()
    a = build_tiny_causal_lm(tokenizer, seed=3, **TINY).state_dict()
    b = build_tiny_causal_lm(tokenizer, seed=3, **TINY).state_dict()
    c = build_tiny_causal_lm(tokenizer, seed=4, **TINY).state_dict()
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.embed_tokens.weight"], c["model.embed_tokens.weight"])


def test_config_carries_the_special_tokens(tokenizer):
    model = build_tiny_causal_lm(tokenizer, **TINY)
    assert model.config.vocab_size == len(tokenizer)
    for cfg in (model.config, model.generation_config):
        assert cfg.pad_token_id == tokenizer.pad_token_id
        assert cfg.bos_token_id == tokenizer.bos_token_id
        assert cfg.eos_token_id == tokenizer.eos_token_id


def test_save_load_and_generate_a_left_padded_batch(tokenizer, tmp_path):
    model = build_tiny_causal_lm(tokenizer, seed=1, **TINY)
    save_pretrained(model, tokenizer, tmp_path / "tiny")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")
    tok = AutoTokenizer.from_pretrained(tmp_path / "tiny")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    state, loaded_state = model.state_dict(), loaded.state_dict()
    assert all(torch.equal(state[k], loaded_state[k]) for k in state)

    prompts = [p.prompt for p in make_prompts(2, seed=0)]
    batch = tok([prompts[0], "the weather was cold . tl;dr :"], padding=True, return_tensors="pt")
    assert batch["attention_mask"][1, 0] == 0  # the short prompt is padded on the left
    with torch.no_grad():
        out = loaded.generate(**batch, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 2 and 1 <= out.shape[1] - batch["input_ids"].shape[1] <= 5
    assert out.dtype == torch.long and int(out.max()) < len(tok)
