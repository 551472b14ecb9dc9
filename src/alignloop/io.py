"""Reading and writing the schema's records: JSONL, Parquet and `datasets`.

The format follows the file's suffix: `.jsonl` (one JSON object per line; `.json`
is read the same way) or `.parquet`. Reading validates every record and reports the
first problems at once, each naming the file, the line (or Parquet row) and the
field. Writing is atomic: the records go to a temporary file beside the target,
which replaces it only once complete, so a failed or interrupted export never leaves
half a file behind.

Importers turn other tools' files into records: `import_hh` reads Anthropic's
HH-RLHF rows (`{"chosen": dialogue, "rejected": dialogue}`).

Pairs files (`read_comparisons`, what train-rm and eval-rm read) come in the three
preference formats of TRL and the `datasets` hub, told apart row by row:

    standard        {"prompt": text, "chosen": text, "rejected": text, ...}  (the schema's)
    conversational  {"prompt": [messages], "chosen": [messages], "rejected": [messages]}
    implicit prompt {"chosen": full text, "rejected": full text} (or two conversations):
                    the prompt is their longest shared start, as TRL's `extract_prompt`
                    cuts it (a space before the cut goes to the completions); HH-RLHF
                    files are cut at the last shared "\n\nAssistant:" instead

Prompts files (`read_prompts`, what train-sft, generate, train-ppo, eval and score
read) may also be in TRL's prompt-only (`{"prompt"}`) and prompt-completion
(`{"prompt", "completion"}`) formats: a row without an `id` is given its line
number ("12"; a Parquet row its row number), and a `completion` becomes the
prompt's `reference` (SFT's target; a conversation's single assistant message as
its text).

A row whose prompt is a text while its chosen and rejected are conversations (as in
HuggingFaceH4/ultrafeedback_binarized, where the conversations repeat the prompt) is
read as implicit, as TRL's `maybe_extract_prompt` does. The hub's extra columns that
alignloop does not use (`IGNORED_PAIR_COLUMNS`: ratings such as `score_chosen`, row
ids, UltraFeedback's `messages`) are dropped, and named in the result; any other
unknown column is still an error, so a typo fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

from alignloop.schema import (
    RECORD_TYPES,
    Comparison,
    Prompt,
    Record,
    SchemaError,
    is_conversation,
    parse_record,
)

__all__ = [
    "HHImport",
    "IGNORED_PAIR_COLUMNS",
    "atomic_write",
    "extract_prompt",
    "from_dataset",
    "import_hh",
    "is_hh_file",
    "preference_row",
    "prompt_row",
    "read_comparisons",
    "read_prompts",
    "read_records",
    "to_dataset",
    "write_json",
    "write_records",
]

R = TypeVar("R", bound=Record)
MAX_REPORTED = 20  # a file's reading stops after this many problems: it may have thousands
_TABULAR = {".parquet"}
# Free-form dict fields are stored as JSON text in tables: Arrow would otherwise turn
# them into one struct type for every row, adding other rows' keys as nulls.
_JSON_IN_TABLES = ("metadata",)


def _table_row(record: Record) -> dict[str, Any]:
    row = record.to_dict(drop_none=False)
    for name in _JSON_IN_TABLES:
        if name in row:
            row[name] = json.dumps(row[name], ensure_ascii=False)
    return row


def _from_table_row(row: dict[str, Any]) -> dict[str, Any]:
    row = {k: v for k, v in row.items() if v is not None}
    for name in _JSON_IN_TABLES:
        if isinstance(row.get(name), str):
            row[name] = json.loads(row[name])
    return row


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in {".jsonl", ".json", ".parquet"}:
        raise SchemaError(f"{path}: unknown format {suffix!r}: use .jsonl or .parquet")
    return suffix


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path` (after an
    fsync), on any error it is removed and `path` is left as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_json(path: str | os.PathLike, obj: object) -> None:
    """One JSON document (metrics, a report), written atomically."""
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _raw_rows(path: Path) -> Iterator[tuple[str, Any]]:
    """(location, parsed object) for each row; JSON syntax errors are SchemaErrors."""
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    if _suffix(path) in _TABULAR:
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for a broken file
            raise SchemaError(f"{path}: not a readable Parquet file: {e}") from e
        for i, row in enumerate(table.to_pylist(), start=1):
            yield f"{path}:row {i}", _from_table_row(row)
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as e:
                raise SchemaError(f"{where}: not valid JSON: {e.msg} (column {e.colno})") from e


def _collect(rows: Iterable[tuple[str, Any]], cls: type[R], source: str) -> list[R]:
    records: list[R] = []
    problems: list[str] = []
    for where, obj in rows:
        try:
            records.append(parse_record(cls, obj, where))  # type: ignore[arg-type]
        except SchemaError as e:
            problems.extend(e.problems)
            if len(problems) >= MAX_REPORTED:
                problems.append(f"{source}: stopped after {MAX_REPORTED} problems")
                break
    if problems:
        raise SchemaError(problems)
    return records


def read_records(path: str | os.PathLike, kind: str | type[R]) -> list[R]:
    """Every record of a JSONL or Parquet file, validated as `kind`
    ("prompt", "completion", "ranking", "comparison" or the record class)."""
    cls = RECORD_TYPES[kind] if isinstance(kind, str) else kind
    path = Path(path)
    return _collect(_raw_rows(path), cls, str(path))  # type: ignore[arg-type]


def write_records(path: str | os.PathLike, records: Iterable[Record]) -> int:
    """Write records atomically (format from the suffix); returns how many."""
    path = Path(path)
    records = list(records)
    if _suffix(path) in _TABULAR:
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pa.Table.from_pylist([_table_row(r) for r in records])
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise SchemaError(
                f"{path}: a Parquet column holds one type, and these records mix texts and "
                f"conversations ({e}); write them to .jsonl, or one file of each"
            ) from e
        with atomic_write(path, "wb") as f:
            pq.write_table(table, f)
    else:
        with atomic_write(path) as f:
            for r in records:
                f.write(json.dumps(r.to_dict(), ensure_ascii=False) + "\n")
    return len(records)


def to_dataset(records: Sequence[Record]):  # -> datasets.Dataset
    """The records as a `datasets.Dataset`, one column per field (`metadata` as
    JSON text, as in Parquet)."""
    import datasets

    return datasets.Dataset.from_list([_table_row(r) for r in records])


def from_dataset(dataset, kind: str | type[R]) -> list[R]:
    """Validate the rows of a `datasets.Dataset` (or any sequence of dicts) as
    records; errors name the row. Columns that are None in a row are dropped first,
    since a table gives every row every column; `metadata` may be JSON text.
    Comparisons may come in any of the three preference formats (`preference_row`)."""
    cls = RECORD_TYPES[kind] if isinstance(kind, str) else kind
    rows = (
        (f"<dataset>:row {i}", _from_table_row(dict(row))) for i, row in enumerate(dataset, start=1)
    )
    if cls is Comparison:
        rows = ((where, preference_row(obj)) for where, obj in rows)
    return _collect(rows, cls, "<dataset>")  # type: ignore[arg-type]


# --- importers -----------------------------------------------------------------

HH_ASSISTANT = "\n\nAssistant:"


@dataclass
class HHImport:
    """What `import_hh` or `read_comparisons` made of a file: the comparisons, the
    rows it skipped (HH files only) and the hub columns it dropped."""

    comparisons: list[Comparison]
    skipped: list[str] = field(default_factory=list)  # "file:line: why", one per row
    ignored_columns: list[str] = field(default_factory=list)  # of IGNORED_PAIR_COLUMNS


def _split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """Split two HH dialogues into (prompt, chosen turn, rejected turn).

    Both dialogues share every turn up to the last "\\n\\nAssistant:" and differ in the
    final assistant turn. The prompt keeps that marker, so prompt + chosen is the
    original dialogue exactly."""
    common = os.path.commonprefix([chosen, rejected])
    cut = common.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError('the two dialogues share no prefix ending in "Assistant:"')
    prompt = common[: cut + len(HH_ASSISTANT)]
    return prompt, chosen[len(prompt) :], rejected[len(prompt) :]


def import_hh(path: str | os.PathLike, *, strict: bool = False) -> HHImport:
    """Comparisons from an Anthropic HH-RLHF file (JSONL with `chosen`/`rejected`
    dialogues). A row that cannot make a valid pair (an empty final turn, say; the
    real data has a few) is skipped and reported, or raises with `strict=True`."""
    path = Path(path)
    result = HHImport(comparisons=[])
    for where, obj in _raw_rows(path):
        try:
            if not isinstance(obj, dict) or set(obj) != {"chosen", "rejected"}:
                keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise ValueError(f'expected keys "chosen" and "rejected", got {keys}')
            if not all(isinstance(obj[k], str) for k in ("chosen", "rejected")):
                raise ValueError('"chosen" and "rejected" must be strings')
            prompt, chosen, rejected = _split_hh(obj["chosen"], obj["rejected"])
            pair = {
                "prompt": prompt,
                "chosen": chosen,
                "rejected": rejected,
                "source": "hh-rlhf",
            }
            result.comparisons.append(parse_record(Comparison, pair, where))  # type: ignore[arg-type]
        except ValueError as e:  # SchemaError is a ValueError
            message = str(e) if isinstance(e, SchemaError) else f"{where}: {e}"
            if strict:
                raise SchemaError(message) from e
            result.skipped.append(message)
    return result


def is_hh_file(path: str | os.PathLike) -> bool:
    """True when the first row of a JSONL file has exactly `chosen` and `rejected`
    and its `chosen` is an HH dialogue."""
    path = Path(path)
    if _suffix(path) in _TABULAR:
        return False
    for _, obj in _raw_rows(path):
        return (
            isinstance(obj, dict)
            and set(obj) == {"chosen", "rejected"}
            and isinstance(obj["chosen"], str)
            and HH_ASSISTANT in obj["chosen"]
        )
    return False


def prompt_row(obj: Any, where: str) -> Any:
    """One row of a prompts file as the schema's prompt object: TRL's rows without an
    `id` get their line (or row) number from `where`, and a `completion` becomes the
    `reference`. Other rows unchanged."""
    if not isinstance(obj, dict) or ("id" in obj and "completion" not in obj):
        return obj
    obj = dict(obj)
    obj.setdefault("id", where.rsplit(":", 1)[-1].removeprefix("row "))
    if "completion" in obj and "reference" not in obj:
        completion = obj.pop("completion")
        if (
            isinstance(completion, list) and len(completion) == 1
            and isinstance(completion[0], dict) and completion[0].get("role") == "assistant"
        ):  # fmt: skip
            completion = completion[0].get("content")
        obj["reference"] = completion
    return obj


def read_prompts(path: str | os.PathLike) -> list[Prompt]:
    """Prompt records of a prompts file in the schema's format or in TRL's
    prompt-only and prompt-completion formats (`prompt_row`); errors name file and
    line as `read_records`' do."""
    path = Path(path)
    rows = ((where, prompt_row(obj, where)) for where, obj in _raw_rows(path))
    return _collect(rows, Prompt, str(path))


# Columns of the hub's preference data sets that a pair does not need, dropped on
# reading (TRL's RewardTrainer does not read them either): UltraFeedback's ratings and
# its `messages` (the chosen conversation again), row ids.
IGNORED_PAIR_COLUMNS = frozenset({"id", "score_chosen", "score_rejected", "messages"})


def extract_prompt(chosen, rejected):
    """(prompt, chosen, rejected) of an implicit-prompt pair: two texts, or two lists
    of messages, split where they first differ, exactly as TRL's `extract_prompt`
    does (a space just before the cut starts the completions; when one is a prefix
    of the other, the last shared element starts them, so neither is empty)."""
    n = min(len(chosen), len(rejected))
    idx = max(n - 1, 0)
    for i in range(n):
        if chosen[i] != rejected[i]:
            idx = i - 1 if i > 0 and chosen[i - 1] == " " else i
            break
    return chosen[:idx], chosen[idx:], rejected[idx:]


def preference_row(obj: Any, ignored: set[str] | None = None) -> Any:
    """One row of a pairs file in any of the three preference formats, as the
    schema's comparison object: implicit prompts extracted, the hub's unused columns
    (`IGNORED_PAIR_COLUMNS`) dropped and added to `ignored`. Other rows unchanged."""
    if not isinstance(obj, dict):
        return obj
    dropped = IGNORED_PAIR_COLUMNS.intersection(obj)
    if dropped:
        if ignored is not None:
            ignored.update(dropped)
        obj = {k: v for k, v in obj.items() if k not in dropped}
    chosen, rejected = obj.get("chosen"), obj.get("rejected")
    if chosen is None or rejected is None or type(chosen) is not type(rejected):
        return obj
    if "prompt" in obj and not (isinstance(obj["prompt"], str) and is_conversation(chosen)):
        return obj  # standard or conversational, with an explicit prompt
    prompt, chosen, rejected = extract_prompt(chosen, rejected)
    return {**{k: v for k, v in obj.items() if k != "prompt"}, "prompt": prompt,
            "chosen": chosen, "rejected": rejected}  # fmt: skip


def read_comparisons(path: str | os.PathLike, *, strict_hh: bool = False) -> HHImport:
    """Comparisons from a pairs file in any of the three preference formats
    (standard, implicit prompt, conversational; see the module's docstring) or from
    an HH-RLHF file, told apart by the first row. Every row must be valid, except
    that an HH file skips (and reports) rows that make no valid pair."""
    if is_hh_file(path):
        return import_hh(path, strict=strict_hh)
    path, ignored = Path(path), set()
    rows = ((where, preference_row(obj, ignored)) for where, obj in _raw_rows(path))
    comparisons = _collect(rows, Comparison, str(path))
    return HHImport(comparisons=comparisons, ignored_columns=sorted(ignored))
