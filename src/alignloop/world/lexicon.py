"""The world's words, grouped by the slot they fill.

Every text the world writes is built from these lists, so the vocabulary is closed
(`alignloop.world.tokenizer.world_vocabulary`) and small enough for a tiny model to
learn in CPU minutes. The groups are disjoint on purpose: a town name appears only
where a town goes, so "which word is the town" is learnable from the word alone, and
the judge can tell an invented entity (a town or a name the document lacks) by lookup.
"""

from __future__ import annotations

# The world's rude words are evaluation's default toxicity list (re-exported here).
from alignloop.evaluate.toxicity import RUDE_WORDS as RUDE_WORDS

TOWNS = (
    "riverton", "oakdale", "millbrook", "fairview", "lakeside", "westfield", "brookfield",
    "ashford", "greenville", "hillcrest", "kingsport", "maplewood", "newport", "northgate",
    "pinehurst", "redmond", "springdale", "stonebridge", "sunnyvale", "woodbury",
    "clearwater", "eastwood", "glenwood", "harborview", "ironwood", "juniper", "linden",
    "meadowbrook", "oakridge", "riverside",
)  # fmt: skip
FIRST_NAMES = (
    "anna", "ben", "carla", "david", "elena", "frank", "grace", "henry", "irene", "jack",
    "karen", "leo", "maria", "nick", "olga", "paul", "rosa", "sam", "tina", "victor",
    "wendy", "yusuf", "zoe", "omar",
)  # fmt: skip
LAST_NAMES = (
    "lee", "smith", "garcia", "chen", "novak", "patel", "brown", "khan", "murphy", "rossi",
    "silva", "walker", "young", "kim", "lopez", "meyer", "nguyen", "okafor", "price",
    "quinn", "reyes", "stone", "turner", "ward",
)  # fmt: skip

# The event: "the {org} {verb} a {adj} {object}".
ORGS = (
    "council", "board", "hospital", "library", "museum", "factory", "university", "police",
    "union", "bank", "airport", "clinic", "college", "market",
)  # fmt: skip
VERBS = (
    "approved", "opened", "closed", "announced", "rejected", "launched", "delayed",
    "expanded", "started", "cancelled", "funded", "proposed",
)  # fmt: skip
ADJECTIVES = ("new", "large", "small", "local", "public", "second", "major", "modest")
OBJECTS = (
    "budget", "bridge", "school", "program", "road", "center", "project", "contract",
    "station", "festival", "service", "tax", "fund", "garden", "shelter", "tower",
)  # fmt: skip
DAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")

# The effect: "{title} {first} {last} said the {object} {effect} {number} {unit}".
TITLES = (
    "mayor", "director", "chief", "manager", "chair", "official", "spokesperson",
    "president",
)  # fmt: skip
EFFECTS = ("adds", "cuts", "creates", "saves", "brings", "needs", "replaces", "moves")
NUMBERS = tuple(
    str(n)
    for n in (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 60, 75, 80, 90, 100, 120,
              150, 200, 250, 300, 400, 500)
)  # fmt: skip
UNITS = (
    "jobs", "homes", "trees", "seats", "beds", "buses", "classes", "nurses", "teachers",
    "workers", "books", "rooms", "lamps", "benches",
)  # fmt: skip

# Fillers for the distractor sentences (news that is not the story).
SHOPS = ("bakery", "bookstore", "cafe", "florist", "pharmacy", "butcher")
STREETS = ("main", "elm", "oak", "high", "mill", "church")
GOODS = ("bread", "flowers", "coffee", "cakes", "soup", "hats", "candles")
WEATHER = ("cold", "warm", "rainy", "windy", "sunny", "foggy", "mild")
ANIMALS = ("fox", "deer", "cat", "hawk", "goat", "swan")
LANDMARKS = ("river", "lake", "pier", "chapel", "mill", "hill")
SPORTS = ("soccer", "chess", "hockey", "rugby", "tennis", "rowing")
TRAFFIC = ("slow", "heavy", "light", "busy")

# Mild insults, as scraped summaries have; no document ever contains one. The words
# are evaluation's default toxicity list (`RUDE_WORDS`, which the gold judge punishes);
# the tuples below say which slot each of them fills.
RUDE_ADJECTIVES = ("stupid", "dumb", "lame", "useless", "pathetic", "idiotic", "crappy")
RUDE_INTERJECTIONS = ("damn", "crap", "ugh")
RUDE_NOUNS = ("idiots", "morons", "jerks", "clowns")

# Words a summary may use without the document having them.
FUNCTION_WORDS = frozenset({"the", "a", "of", "in", "on", "it", "said", "and", ";", ",", "."})

# Names of people and places: a summary that names one the document lacks invents it.
ENTITY_WORDS = frozenset(TOWNS + FIRST_NAMES + LAST_NAMES)
