"""The words of the labeling app's pages, one catalogue per language: `en.json`,
`zh.json` (Simplified Chinese), ... in this folder; a new language is one more file
with the same keys (a test holds every catalogue to English's keys and {placeholders}).

    t = translator("zh")
    t("home.title")                          # "项目"
    t("home.tasks_done", done=3, total=14)   # "已完成 3 / 14 个任务"

A value is a string with {name} placeholders, or {"one": ..., "other": ...} for a
count (`count=n` picks "one" when n == 1). The labeling page's script gets the keys
under "js." (see `js_strings`), as a JSON script tag the page does not run.

The language is the `alignloop_lang` cookie (set by the switch on every page) if it
names a catalogue, else the best match of the browser's Accept-Language, else English.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from functools import cache
from importlib.resources import files
from typing import Any

__all__ = [
    "COOKIE",
    "DEFAULT",
    "LANGUAGES",
    "catalogue",
    "choose",
    "js_strings",
    "translator",
]

COOKIE = "alignloop_lang"
DEFAULT = "en"
# code -> (the language's own name, the HTML lang attribute)
LANGUAGES: dict[str, tuple[str, str]] = {"en": ("English", "en"), "zh": ("简体中文", "zh-Hans")}


@cache
def catalogue(lang: str) -> dict[str, Any]:
    """The strings of `lang` (a code of LANGUAGES), read once."""
    if lang not in LANGUAGES:
        raise KeyError(f"no catalogue for language {lang!r}; known: {', '.join(LANGUAGES)}")
    return json.loads((files(__name__) / f"{lang}.json").read_text(encoding="utf-8"))


def translator(lang: str) -> Callable[..., str]:
    """t(key, count=None, **params): the text of `key` in `lang`, English where the
    catalogue lacks it, the key itself where English lacks it too."""
    own, english = catalogue(lang), catalogue(DEFAULT)

    def t(key: str, count: int | None = None, **params: Any) -> str:
        value = own.get(key, english.get(key, key))
        if isinstance(value, dict):
            value = value["one"] if count == 1 and "one" in value else value["other"]
        if count is not None:
            params["count"] = count
        return value.format_map(_Keep(params)) if params or "{" in value else value

    return t


class _Keep(dict):
    """format_map's mapping that leaves an unknown {placeholder} as it is."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def js_strings(lang: str) -> dict[str, Any]:
    """The script's strings ("js." keys), English filling any gap."""
    merged = {**catalogue(DEFAULT), **catalogue(lang)}
    return {k: v for k, v in merged.items() if k.startswith("js.")}


_TAG = re.compile(r"^\s*([A-Za-z]{1,8})(?:-[A-Za-z0-9]{1,8})*\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


def choose(cookie: str | None, accept_language: str | None) -> str:
    """The page's language: the cookie's if it names a catalogue, else the first
    language of Accept-Language (by q) that has one, else English."""
    if cookie in LANGUAGES:
        return cookie
    wanted: list[tuple[float, int, str]] = []
    for i, part in enumerate((accept_language or "")[:500].split(",")):
        m = _TAG.match(part)
        if not m:
            continue
        try:
            q = float(m.group(2)) if m.group(2) else 1.0
        except ValueError:
            continue
        wanted.append((-q, i, m.group(1).lower()))
    for q, _, code in sorted(wanted):
        if q < 0 and code in LANGUAGES:
            return code
    return DEFAULT
