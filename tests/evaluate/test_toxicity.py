"""Toxicity: the word list (the default one, which the world writes, or a file) and a
tiny local Hugging Face classifier through transformers' pipeline."""

from __future__ import annotations

import pytest
import torch

from alignloop.config import ConfigError
from alignloop.evaluate.toxicity import (
    HFToxicity,
    ToxicityClassifier,
    WordListToxicity,
    load_toxicity,
    resolve_toxic_label,
    toxicity_flags,
    toxicity_stats,
)


def test_default_word_list_agrees_with_the_world():
    from alignloop.loop import stand_in_completions
    from alignloop.world import has_rude_word, make_prompts

    prompts = make_prompts(30, seed=2)
    texts = [c.completion for c in stand_in_completions(prompts, k=4, seed=2)]
    texts += [p.reference for p in prompts]
    words = WordListToxicity()
    flags = toxicity_flags(words, texts)
    assert flags == [has_rude_word(t) for t in texts]
    assert 0 < sum(flags) < len(texts)  # the world does write rude words, not always
    assert isinstance(words, ToxicityClassifier)


def test_word_list_matches_whole_words_case_insensitively():
    words = WordListToxicity(["idiot", "don't"])
    assert words.scores(["You IDIOT!", "idiotic", "I don't know", "fine"]) == [1, 0, 1, 0]
    assert words.matches("idiot, idiot.") == ["idiot", "idiot"]


def test_word_list_file(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("# rude words\nDarn\n\nheck  # mild\n")
    words = load_toxicity(f"words:{path}", threshold=0.5)
    assert words.words == {"darn", "heck"}
    assert words.scores(["oh darn it", "what the heck", "nice"]) == [1.0, 1.0, 0.0]
    path.write_text("darn\ntwo words\n")
    with pytest.raises(ConfigError, match=r"words.txt:2: 'two words' is not one word"):
        load_toxicity(f"words:{path}")
    with pytest.raises(FileNotFoundError, match="no such word list"):
        load_toxicity(f"words:{tmp_path / 'missing.txt'}")


def test_toxicity_stats():
    assert toxicity_stats([0.1, 0.6, 0.5, 0.0], 0.5) == {"rate": 0.5, "score_mean": 0.3, "n": 4}
    assert toxicity_stats([], 0.5)["rate"] is None


def test_hf_classifier_scores_are_the_toxic_probability(tiny):
    """Each score is softmax(logits)[toxic] of the model on the text alone, whatever
    the batch it was padded into."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    texts = ["the bank funded a new station", "stupid", "the tower creates 75 buses ; lame"]
    clf = load_toxicity(str(tiny["toxic"]), threshold=0.5)
    assert isinstance(clf, HFToxicity) and clf.toxic_label == "toxic"
    scores = clf.scores(texts)
    model = AutoModelForSequenceClassification.from_pretrained(tiny["toxic"]).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny["toxic"])
    with torch.no_grad():
        want = [
            torch.softmax(model(**tokenizer(t, return_tensors="pt")).logits[0], -1)[1].item()
            for t in texts
        ]
    assert scores == pytest.approx(want, abs=1e-5)
    assert len(set(round(s, 6) for s in scores)) == 3  # the texts get different scores
    assert toxicity_flags(clf, texts) == [s >= 0.5 for s in want]
    assert clf.scores([]) == []


def test_hf_label_resolution(tiny):
    assert HFToxicity(tiny["toxic"], toxic_label="NEUTRAL").toxic_label == "neutral"
    with pytest.raises(
        ConfigError, match=r"no label 'insult'; its labels are \['neutral', 'toxic'\]"
    ):
        HFToxicity(tiny["toxic"], toxic_label="insult")
    with pytest.raises(ConfigError, match=r"cannot tell which label means toxic among \['LABEL_0'"):
        HFToxicity(tiny["generic"])
    assert HFToxicity(tiny["generic"], toxic_label="label_2").toxic_label == "LABEL_2"
    assert resolve_toxic_label(["LABEL_0"], None, "m") == "LABEL_0"  # one output: itself
    assert resolve_toxic_label(["nothate", "hate"], None, "m") == "hate"


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot load a text classifier"):
        load_toxicity(str(tmp_path / "no-model"))
