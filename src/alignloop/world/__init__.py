"""The built-in synthetic summarization world: the demo's stand-in for real data,
a real model and real people, small enough to run the whole loop on a laptop CPU.

    documents   short news documents with flawed reference summaries (`make_prompts`)
    judge       the hidden gold judge (`gold_utility`, by criterion; `harmlessness`) and
                the rude-word classifier (`has_rude_word`, `rude_rate`)
    candidates  imperfect summaries from a stand-in policy (`candidate_summaries`)
    labelers    simulated labelers who rank by the judge, noisily (`simulate_rankings`);
                the default panel (`default_labelers`), one with strong tastes
                (`personal_labelers`) and a persona outside it (`NEW_USER`)
    tokenizer   a word-level tokenizer of the closed vocabulary (`build_tokenizer`)

Everything is deterministic given a seed. Importing this package does not import
torch; `build_tokenizer` imports transformers when called.
"""

from alignloop.world.candidates import candidate_summaries
from alignloop.world.documents import SEPARATOR, make_prompts
from alignloop.world.judge import (
    CRITERIA,
    RUDE_WORDS,
    gold_utility,
    harmlessness,
    has_rude_word,
    judge_prefers,
    rude_rate,
    utility_breakdown,
)
from alignloop.world.labelers import (
    NEW_USER,
    SimulatedLabeler,
    default_labelers,
    disagreement,
    panel_utility,
    personal_labelers,
    simulate_rankings,
)
from alignloop.world.tokenizer import build_tokenizer, world_vocabulary

__all__ = [
    "CRITERIA",
    "NEW_USER",
    "RUDE_WORDS",
    "SEPARATOR",
    "SimulatedLabeler",
    "build_tokenizer",
    "candidate_summaries",
    "default_labelers",
    "disagreement",
    "gold_utility",
    "harmlessness",
    "has_rude_word",
    "judge_prefers",
    "make_prompts",
    "panel_utility",
    "personal_labelers",
    "rude_rate",
    "simulate_rankings",
    "utility_breakdown",
    "world_vocabulary",
]
