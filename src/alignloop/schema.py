"""The records of the RLHF loop, shared by every stage.

    prompt      {"id", "prompt", "reference"?, "metadata"?}
    completion  {"id", "prompt_id", "completion", "policy"?}
    ranking     {"prompt_id", "labeler", "criterion", "ranking": [[id, ...], ...],
                 "unrankable"?, "rationale"?, "confidence"?}
    comparison  {"prompt", "chosen", "rejected", "margin"?, ...provenance}
    message     {"role": "system" | "user" | "assistant" | "tool", "content"}

A prompt is a text or a conversation: a list of messages, as chat models and TRL's
conversational data sets write it (`alignloop.chat` turns either into model input).
A completion is always a text: the assistant's turn. A comparison of a conversation
holds its chosen and rejected turns as lists of assistant messages (a text given for
them is wrapped as one), TRL's conversational preference format.

A ranking is kept exactly as the labeler gave it: groups of completion ids, best group
first; the ids inside one group are tied. Comparisons (pairs) are derived from rankings
by `alignloop.feedback.pairs`, never stored in place of them. The comparison columns
are the ones the ecosystem's preference data sets use (`prompt`, `chosen`,
`rejected`), so an exported file loads in `datasets` and in other trainers as it is.

Every record rejects unknown fields, so a typo in a field name is an error instead of
a silently ignored value. Records read from a file remember where they came from
(`record.where`, e.g. "rankings.jsonl:12"), so a later check that spans files (an id
that does not exist) can still name the file and the line.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

__all__ = [
    "Comparison",
    "Completion",
    "Conversation",
    "Message",
    "Prompt",
    "RECORD_TYPES",
    "Ranking",
    "Record",
    "SchemaError",
    "check_ranking_groups",
    "check_rankings",
    "index_by_id",
    "is_conversation",
    "join_text",
    "parse_record",
    "ranking_problems",
]

Id = Annotated[str, StringConstraints(min_length=1, strip_whitespace=False)]


def _finite(v: float | None) -> float | None:
    if v is not None and not math.isfinite(v):
        raise ValueError("must be a finite number")
    return v


FiniteOrNone = Annotated[float | None, AfterValidator(_finite)]  # NaN and inf refused


class SchemaError(ValueError):
    """Bad input, with where it is: `file:line: field 'x': what is wrong`.

    `problems` holds one message per problem found (a file with several bad lines
    reports the first few of them at once, so a user fixes them in one go).
    """

    shown = 20  # problems in the message; all of them stay in `problems`

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        lines = self.problems[: self.shown]
        if len(self.problems) > self.shown:
            lines.append(f"... and {len(self.problems) - self.shown} more problems")
        super().__init__("\n".join(lines))


class Record(BaseModel):
    """Base of every record: strict about unknown fields, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: ClassVar[str]
    _where: str | None = PrivateAttr(default=None)

    @property
    def where(self) -> str:
        """Where the record was read from ("file:line"), or "<memory>"."""
        return self._where or "<memory>"

    def __eq__(self, other: object) -> bool:
        # Equal records hold equal fields, wherever they were read from.
        return type(self) is type(other) and self.__dict__ == other.__dict__

    __hash__ = BaseModel.__hash__

    def to_dict(self, *, drop_none: bool = True) -> dict[str, Any]:
        """A plain dict for JSON; `drop_none=False` keeps every column (tables)."""
        return self.model_dump(mode="json", exclude_none=drop_none)


def _non_empty_text(value: str, field: str) -> str:
    if not value.strip():
        raise ValueError(f"{field} is empty")
    return value


ROLES = ("system", "user", "assistant", "tool")


class Message(BaseModel):
    """One turn of a conversation: {"role", "content"}, the shape chat templates and
    TRL's conversational data sets use. Unknown fields are an error, as in records."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    role: Literal["system", "user", "assistant", "tool"]
    content: str


# A conversation is a tuple, so frozen records that hold one stay hashable; files hold
# it as a JSON list.
Conversation = tuple[Message, ...]


def _as_conversation(value: Any, field: str) -> Any:
    """A list of message dicts -> a Conversation, with one clear message per problem
    (pydantic's union errors would name both branches); anything else unchanged."""
    if not isinstance(value, list | tuple):
        if not isinstance(value, str):
            raise ValueError("must be a text or a list of {role, content} messages")
        return value
    if not value:
        raise ValueError(f"{field} is an empty list of messages")
    messages = []
    for i, m in enumerate(value, start=1):
        if isinstance(m, Message):
            messages.append(m)
            continue
        if not isinstance(m, dict):
            raise ValueError(f"message {i}: expected {{role, content}}, got {type(m).__name__}")
        if set(m) != {"role", "content"}:
            raise ValueError(
                f"message {i}: expected exactly the keys 'role' and 'content', got {sorted(m)}"
            )
        if m["role"] not in ROLES:
            raise ValueError(f"message {i}: role {m['role']!r} is not one of {', '.join(ROLES)}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}: content must be a text")
        messages.append(Message(role=m["role"], content=m["content"]))
    return tuple(messages)


def is_conversation(value: Any) -> bool:
    """Whether a prompt (or a comparison's side) is a list of messages, not a text."""
    return isinstance(value, tuple | list)


class Prompt(Record):
    """A prompt to complete: a text, or a conversation (a list of messages that a
    chat template renders). `reference` is an optional reference completion (a
    human-written summary, say; the assistant's turn of a conversation); `metadata`
    holds anything else a task needs (the demo world keeps the document's facts
    there)."""

    kind: ClassVar[str] = "prompt"
    id: Id
    prompt: str | Conversation
    reference: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_messages(cls, v: Any) -> Any:
        return _as_conversation(v, "prompt")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_empty(cls, v: str | Conversation) -> str | Conversation:
        if isinstance(v, str):
            return _non_empty_text(v, "prompt")
        if not any(m.content.strip() for m in v):
            raise ValueError("prompt is empty: every message's content is blank")
        return v


class Completion(Record):
    """One completion of one prompt; `policy` names the model that wrote it (hidden
    from labelers). An empty completion is allowed: models do produce them."""

    kind: ClassVar[str] = "completion"
    id: Id
    prompt_id: Id
    completion: str
    policy: str | None = None


def check_ranking_groups(v: Any) -> Any:
    """A ranking arrives as a list of groups; a flat list of ids is the usual slip
    (a pydantic "before" validator of every model that holds a ranking)."""
    if isinstance(v, list) and any(isinstance(g, str) for g in v):
        raise ValueError(
            'must be a list of groups of completion ids, best first, e.g. [["a"], '
            '["b", "c"]] (b and c tied); got a flat list'
        )
    return v


def _some(ids: Iterable[str], shown: int = 10) -> str:
    """Ids for a message, at most `shown` of them (a client may send a million)."""
    ids = list(ids)
    listed = ", ".join(repr(i[:100]) for i in ids[:shown])
    return listed + (f" and {len(ids) - shown} more" if len(ids) > shown else "")


def ranking_problems(
    groups: list[list[str]], *, unrankable: bool = False, known: Iterable[str] | None = None
) -> list[str]:
    """Everything wrong with `groups` as a ranking, one message per problem (groups
    counted from 1); empty when it is well formed. The one ranking check of alignloop:
    the records (`Ranking`) and the labeling server use it.

    Well formed: no empty group, no id twice, and not empty unless `unrankable`.
    With `known` (the completion ids to rank): every id is one of them and none is
    left out. An unrankable ranking may be empty."""
    if not groups:
        if unrankable:
            return []
        return [
            "ranking is empty: rank every completion (tied ones in one group), or set "
            '"unrankable": true'
        ]
    problems = [
        f"group {i} of {len(groups)} is empty: every group needs at least one completion id"
        for i, group in enumerate(groups, start=1)
        if not group
    ]
    known_set = None if known is None else set(known)
    where: dict[str, int] = {}
    unknown: list[str] = []
    for i, group in enumerate(groups, start=1):
        for cid in group:
            if known_set is not None and cid not in known_set:
                unknown.append(cid)
            elif where.get(cid) == i:
                problems.append(
                    f"completion {cid!r} appears twice in group {i}; each completion goes "
                    "in exactly one group"
                )
            elif cid in where:
                problems.append(
                    f"completion {cid!r} appears twice (groups {where[cid]} and {i}); "
                    "each completion goes in exactly one group"
                )
            else:
                where[cid] = i
    if known is not None:
        known = list(dict.fromkeys(known))
        if unknown:
            problems.append(
                f"not a completion of this assignment: {_some(dict.fromkeys(unknown))} "
                f"(its completions are {_some(known)})"
            )
        missing = [c for c in known if c not in where]
        if missing:
            problems.append(
                f"missing from the ranking: {_some(missing)}; rank every completion "
                "(tied ones in one group)"
            )
    if len(problems) > SchemaError.shown:  # bounded, whatever a client sends
        problems[SchemaError.shown :] = [f"and {len(problems) - SchemaError.shown} more problems"]
    return problems


class Ranking(Record):
    """One labeler's ranking of a prompt's completions by one criterion.

    `ranking` is a list of groups of completion ids, best group first; several ids in
    one group are tied. An `unrankable` ranking (the labeler could not judge) may
    have an empty `ranking` and gives no pairs.
    """

    kind: ClassVar[str] = "ranking"
    prompt_id: Id
    labeler: Id
    criterion: Id
    ranking: Annotated[list[list[Id]], BeforeValidator(check_ranking_groups)]
    unrankable: bool = False
    rationale: str | None = None
    confidence: FiniteOrNone = None

    @model_validator(mode="after")
    def _well_formed(self) -> Ranking:
        problems = ranking_problems(self.ranking, unrankable=self.unrankable)
        if problems:
            raise ValueError("ranking: " + "; ".join(problems))
        return self

    @property
    def completion_ids(self) -> list[str]:
        """Every ranked id, best first (tied ids in their given order)."""
        return [cid for group in self.ranking for cid in group]

    def positions(self) -> dict[str, int]:
        """Completion id -> index of its group (0 = best); tied ids share one."""
        return {cid: g for g, group in enumerate(self.ranking) for cid in group}


class Comparison(Record):
    """A preference pair: `chosen` is better than `rejected` as a completion of
    `prompt`. `margin` (optional) says by how much; the rest is provenance, kept so a
    trainer can group all pairs of one prompt together and a user can trace a pair
    back to the labeler and the ranking it came from."""

    kind: ClassVar[str] = "comparison"
    prompt: str | Conversation
    chosen: str | Conversation
    rejected: str | Conversation
    margin: FiniteOrNone = None
    prompt_id: str | None = None
    chosen_id: str | None = None
    rejected_id: str | None = None
    labeler: str | None = None
    criterion: str | None = None
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _assistant_turns(cls, data: Any) -> Any:
        """A conversation's chosen and rejected texts become assistant messages, so a
        file of them is in TRL's conversational format (one format per row)."""
        if isinstance(data, dict) and is_conversation(data.get("prompt")):
            turn = lambda v: [{"role": "assistant", "content": v}] if isinstance(v, str) else v  # noqa: E731
            data = {**data, **{k: turn(data[k]) for k in ("chosen", "rejected") if k in data}}
        return data

    @field_validator("prompt", "chosen", "rejected", mode="before")
    @classmethod
    def _messages(cls, v: Any, info: Any) -> Any:
        return _as_conversation(v, info.field_name)

    @field_validator("chosen", "rejected")
    @classmethod
    def _text_not_empty(cls, v: str | Conversation, info: Any) -> str | Conversation:
        if isinstance(v, str):
            return _non_empty_text(v, info.field_name)
        if v[-1].role != "assistant":
            raise ValueError(f"{info.field_name} must end with an assistant message")
        return _non_empty_text(v[-1].content, info.field_name) and v

    @model_validator(mode="after")
    def _different(self) -> Comparison:
        if self.chosen == self.rejected:
            raise ValueError("chosen is identical to rejected")
        if isinstance(self.prompt, str) and not (
            isinstance(self.chosen, str) and isinstance(self.rejected, str)
        ):
            raise ValueError(
                "a text prompt takes text completions: chosen and rejected are lists of "
                "messages only when the prompt is one"
            )
        return self


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (Prompt, Completion, Ranking, Comparison)
}


def _describe(error: Mapping[str, Any]) -> str:
    """One pydantic error as "field 'x': message"."""
    loc = ".".join(str(p) for p in error.get("loc", ()))
    msg = error.get("msg", "invalid")
    msg = msg.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        msg = "unknown field (a typo? free-form fields go in 'metadata' of a prompt)"
    return f"field {loc!r}: {msg}" if loc else msg


def parse_record(kind: str | type[Record], obj: Any, where: str = "<memory>") -> Record:
    """Validate one object as a record of `kind`; errors name `where` and the field."""
    cls = RECORD_TYPES[kind] if isinstance(kind, str) else kind
    if not isinstance(obj, dict):
        raise SchemaError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    try:
        record = cls.model_validate(obj)
    except ValidationError as e:
        problems = [f"{where}: {cls.kind}: {_describe(err)}" for err in e.errors()]
        raise SchemaError(problems) from None
    record._where = where
    return record


IdRecord = TypeVar("IdRecord", Prompt, Completion)


def index_by_id(records: Iterable[IdRecord], problems: list[str]) -> dict[str, IdRecord]:
    """The records by id, a later record taking an earlier one's place; each id used
    again adds `file:line: field 'id': prompt id 'x' already used at file:line` to
    `problems` (naming the record's kind)."""
    by_id: dict[str, IdRecord] = {}
    for r in records:
        if r.id in by_id:
            problems.append(
                f"{r.where}: field 'id': {r.kind} id {r.id!r} already used at {by_id[r.id].where}"
            )
        by_id[r.id] = r
    return by_id


def check_rankings(
    rankings: Iterable[Ranking],
    completions: Iterable[Completion],
    prompts: Iterable[Prompt] | None = None,
) -> None:
    """Check that rankings refer to what exists: every prompt id is a known prompt,
    every ranked id is a completion of that very prompt, and completion ids are
    unique. Raises one SchemaError naming every bad record's file and line."""
    problems: list[str] = []
    by_id = index_by_id(completions, problems)
    prompt_ids = None if prompts is None else {p.id for p in prompts}
    if prompt_ids is not None:
        for c in by_id.values():
            if c.prompt_id not in prompt_ids:
                problems.append(f"{c.where}: field 'prompt_id': no prompt with id {c.prompt_id!r}")
    for r in rankings:
        if prompt_ids is not None and r.prompt_id not in prompt_ids:
            problems.append(f"{r.where}: field 'prompt_id': no prompt with id {r.prompt_id!r}")
        for cid in r.completion_ids:
            c = by_id.get(cid)
            if c is None:
                problems.append(f"{r.where}: field 'ranking': no completion with id {cid!r}")
            elif c.prompt_id != r.prompt_id:
                problems.append(
                    f"{r.where}: field 'ranking': completion {cid!r} belongs to prompt "
                    f"{c.prompt_id!r}, not {r.prompt_id!r}"
                )
    if problems:
        raise SchemaError(problems)


def join_text(prompt: str, completion: str) -> str:
    """The text a model reads for a completion of a prompt.

    Plain concatenation when either side brings the whitespace between them (HH-RLHF
    turns start with a space; a prompt may end with a newline); otherwise one space,
    so that "... tl;dr :" and "the summary" do not run into one word."""
    if not prompt or not completion or prompt[-1].isspace() or completion[0].isspace():
        return prompt + completion
    return f"{prompt} {completion}"
