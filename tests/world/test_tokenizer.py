"""The world's word-level tokenizer: exact round trips, saved like any HF tokenizer."""

from __future__ import annotations

import sys

from alignloop.world import build_tokenizer, make_prompts, world_vocabulary


def test_vocabulary_is_small_sorted_and_complete():
    vocab = world_vocabulary()
    assert vocab == sorted(set(vocab)) and len(vocab) <= 600
    assert "tl;dr" in vocab and "riverton" in vocab and "stupid" in vocab


def test_round_trip_of_every_world_text_without_unknowns():
    tok = build_tokenizer()
    specials = (tok.pad_token, tok.eos_token, tok.bos_token, tok.unk_token)
    assert specials == ("<pad>", "</s>", "<s>", "<unk>")
    assert tok.padding_side == "left"
    for p in make_prompts(500, seed=5):
        for text in (p.prompt, p.reference, p.metadata["ideal"]):
            ids = tok(text)["input_ids"]
            assert len(ids) == len(text.split())  # one word, one token; no specials added
            assert tok.unk_token_id not in ids
            assert tok.decode(ids) == text


def test_save_and_load_with_auto_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    text = make_prompts(1, seed=0)[0].prompt
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.decode(loaded(text)["input_ids"]) == text
    assert loaded.padding_side == "left" and loaded.pad_token_id == tok.pad_token_id
    batch = loaded([text, "riverton council"], padding=True)
    assert batch["input_ids"][1][0] == loaded.pad_token_id  # padded on the left
    assert loaded.decode(batch["input_ids"][1], skip_special_tokens=True) == "riverton council"


def test_importing_the_world_does_not_import_torch():
    import subprocess

    code = "import sys, alignloop.world; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
