"""One policy for several users, told apart by a prefix (issue 16, "a policy conditioned
on a user token/prefix"): the other way to personalize than a LoRA adapter per user.

    train-ppo --users NAME,...    each prompt of a rollout goes to one user in turn
                                  (`assign_users`), the policy reads it after that
                                  user's prefix (`with_user_prefix`), the reward model
                                  as the user wrote it, and the reward is that user's
    generate --user NAME          samples for one user: the saved policy remembers its
                                  prefix and users (`save_conditioning`, CONDITIONING_FILE)

A prefix is `--user-prefix`, a template with one field, {user}: a text prompt is read
as prefix + text; a conversation gets the prefix at the start of its first user turn
(every chat template renders a user turn, not every one a system message). {user} is
the user's key, their name unless --users gives NAME=KEY: a tokenizer of a closed
vocabulary (the built-in world's) reads names it does not know as one unknown token,
and a key in its vocabulary is what tells the users apart.

This module imports no torch.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from alignloop.config import ConfigError

__all__ = [
    "CONDITIONING_FILE",
    "DEFAULT_USER_PREFIX",
    "assign_users",
    "check_user_prefix",
    "parse_users",
    "prefix_for",
    "read_conditioning",
    "save_conditioning",
    "user_prefix",
    "with_user_prefix",
]

CONDITIONING_FILE = "alignloop_conditioning.json"
# Spaces around the key: a word-level tokenizer (the world's) splits on them alone.
DEFAULT_USER_PREFIX = "for {user} : "


def parse_users(items: Sequence[str], field: str = "--users") -> dict[str, str]:
    """--users items, each NAME or NAME=KEY, several to an item when comma-separated
    (`--users a,b` or `--users a b`) -> {name: key}, in the order given; the key is
    the name unless given. Empty names or keys, and a name twice, are ConfigErrors
    naming `field`."""
    users: dict[str, str] = {}
    for item in items:
        for part in str(item).split(","):
            name, eq, key = (s.strip() for s in part.partition("="))
            key = key if eq else name
            if not name or not key:
                raise ConfigError(f"{field} {item!r}: expected NAME or NAME=KEY, comma-separated")
            if name in users:
                raise ConfigError(f"{field}: {name!r} is given twice")
            users[name] = key
    keys = list(users.values())
    if len(set(keys)) < len(keys):
        twice = next(k for k in keys if keys.count(k) > 1)
        raise ConfigError(f"{field}: two users have the key {twice!r}; the policy could not "
                          "tell them apart")  # fmt: skip
    return users


def check_user_prefix(template: str, field: str = "--user-prefix") -> None:
    """A ConfigError naming `field` unless `template` is a str.format template whose
    only field is {user}, used at least once."""
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ConfigError(f"{field} {template!r}: not a template: {e}") from e
    if "user" not in names or any(n != "user" for n in names):
        raise ConfigError(
            f"{field} {template!r}: the template must hold {{user}} and no other field "
            "(literal braces are written {{ and }})"
        )


def user_prefix(template: str, key: str) -> str:
    """The prefix of the user whose key is `key`: the template filled in."""
    return template.format(user=key)


def with_user_prefix(prompt: Any, prefix: str) -> Any:
    """A prompt as a conditioned policy reads it: a text prompt after `prefix`; a
    conversation (messages, or {role, content} dicts) as a list of dicts whose first
    user turn starts with it (the first turn, when none is the user's). The prompt
    itself is not changed."""
    if isinstance(prompt, str):
        return prefix + prompt
    messages = [
        {"role": m["role"], "content": m["content"]} if isinstance(m, dict)
        else {"role": m.role, "content": m.content}
        for m in prompt
    ]  # fmt: skip
    if not messages:
        return messages
    first = next((i for i, m in enumerate(messages) if m["role"] == "user"), 0)
    messages[first]["content"] = prefix + messages[first]["content"]
    return messages


def assign_users(users: Sequence[str], n: int, *, seed: int, start: int = 0) -> list[str]:
    """The users of the run's prompts start, ..., start + n - 1: the run's prompts go
    to the users in cycles of len(users), each cycle a seeded shuffle of them, so every
    run of len(users) prompts from a cycle's start holds each user once (balanced) and
    a prompt's user depends only on (seed, its place in the run): a resumed run and
    each process of a distributed one compute the same."""
    if not users:
        raise ValueError("no users to assign")
    u = len(users)
    out = []
    for c in range(start, start + n):
        cycle, place = divmod(c, u)
        order = list(users)
        random.Random(seed * 1_000_003 + cycle).shuffle(order)
        out.append(order[place])
    return out


def save_conditioning(out_dir: str | Path, template: str, users: dict[str, str]) -> Path:
    """CONDITIONING_FILE in a saved policy's folder: {"user_prefix": template, "users":
    {name: key}}, what `generate --user NAME` reads."""
    from alignloop.io import write_json

    path = Path(out_dir) / CONDITIONING_FILE
    write_json(path, {"user_prefix": template, "users": dict(users)})
    return path


def read_conditioning(*folders: str | Path | None) -> tuple[dict, Path] | None:
    """(CONDITIONING_FILE's content, its path) from the first of `folders` (an
    adapter's, then its base's) that holds one; None when none does. A malformed file
    is a ConfigError naming it."""
    for folder in folders:
        if folder is None:
            continue
        path = Path(folder) / CONDITIONING_FILE
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read it: {e}") from e
        users = data.get("users") if isinstance(data, dict) else None
        ok = isinstance(users, dict) and all(isinstance(v, str) for v in users.values())
        if not ok or not isinstance(data.get("user_prefix"), str):
            raise ConfigError(f'{path}: expected {{"user_prefix": TEMPLATE, "users": '
                              '{NAME: KEY}}')  # fmt: skip
        check_user_prefix(data["user_prefix"], field=str(path))
        return data, path
    return None


def prefix_for(user: str, *folders: str | Path | None, template: str | None = None) -> str:
    """The prefix a conditioned policy reads for `user` (`generate --user NAME`): with
    `template` (--user-prefix), that template; without, the one saved with the policy
    (CONDITIONING_FILE in the first of `folders`: an adapter's, then its base's), whose
    users `user` must be one of. {user} is the user's saved key (their name when the
    file does not know them). Each failure is a ConfigError naming --user."""
    saved = read_conditioning(*folders)
    if template is not None:
        check_user_prefix(template)
        keys = saved[0]["users"] if saved else {}
        return user_prefix(template, keys.get(user, user))
    where = next((str(f) for f in folders if f is not None), "the policy")
    if saved is None:
        raise ConfigError(
            f"--user {user}: {where} is not a conditioned policy (no {CONDITIONING_FILE}: "
            "train-ppo --users writes one); give its prefix with --user-prefix TEMPLATE"
        )
    data, path = saved
    if user not in data["users"]:
        raise ConfigError(
            f"--user {user}: the policy was tuned for {', '.join(data['users'])} ({path}); "
            "another user's prefix all the same: --user-prefix TEMPLATE"
        )
    return user_prefix(data["user_prefix"], data["users"][user])
