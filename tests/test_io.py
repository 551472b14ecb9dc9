import json
import os

import pytest

from alignloop.io import (
    atomic_write,
    from_dataset,
    import_hh,
    read_comparisons,
    read_records,
    to_dataset,
    write_records,
)
from alignloop.schema import Comparison, Prompt, Ranking, SchemaError


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_round_trip_every_kind(tmp_path, small_task, suffix):
    prompts, completions, rankings = small_task
    prompts = [*prompts, Prompt(id="p3", prompt="x", reference="y", metadata={"facts": [["a"]]})]
    pairs = [
        Comparison(prompt="q", chosen="a", rejected="b", margin=2.0, labeler="ann"),
        Comparison(prompt="q", chosen="c", rejected="d"),
    ]
    for kind, records in [("prompt", prompts), ("completion", completions),
                          ("ranking", rankings), ("comparison", pairs)]:  # fmt: skip
        path = tmp_path / f"{kind}{suffix}"
        assert write_records(path, records) == len(records)
        back = read_records(path, kind)
        assert back == records
        assert back[0].where.startswith(str(path))


def test_jsonl_rows_carry_only_the_fields_that_are_set(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_records(path, [Comparison(prompt="q", chosen="a", rejected="b")])
    assert json.loads(path.read_text()) == {"prompt": "q", "chosen": "a", "rejected": "b"}


def test_dataset_round_trip(small_task):
    _, _, rankings = small_task
    ds = to_dataset(rankings)
    assert set(ds.column_names) >= {"prompt_id", "labeler", "criterion", "ranking"}
    assert ds[0]["ranking"] == [["p1-a"], ["p1-b", "p1-c"]]
    assert from_dataset(ds, Ranking) == rankings


def test_dataset_errors_name_the_row():
    with pytest.raises(SchemaError, match=r"<dataset>:row 2: comparison: field 'chosen'"):
        from_dataset([{"prompt": "q", "chosen": "a", "rejected": "b"},
                      {"prompt": "q", "rejected": "b"}], "comparison")  # fmt: skip


def test_bad_json_names_file_and_line(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": "a", "prompt": "x"}', '{"id": "b", "prompt"'])
    with pytest.raises(SchemaError, match=r"p.jsonl:2: not valid JSON"):
        read_records(path, "prompt")


def test_all_bad_lines_are_reported_at_once(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [
        '{"id": "a", "prompt": "x"}',
        '',
        '{"id": "b", "promt": "x"}',
        '{"id": "c", "prompt": ""}',
    ])  # fmt: skip
    with pytest.raises(SchemaError) as e:
        read_records(path, "prompt")
    text = str(e.value)
    assert "p.jsonl:3: prompt: field 'promt': unknown field" in text
    assert "p.jsonl:3: prompt: field 'prompt': Field required" in text
    assert "p.jsonl:4: prompt: field 'prompt': prompt is empty" in text


def test_a_file_with_many_bad_lines_stops_early(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", ['{"id": 1, "prompt": "x"}'] * 1000)
    with pytest.raises(SchemaError) as e:
        read_records(path, "prompt")
    assert len(e.value.problems) == 21 and "stopped after 20 problems" in e.value.problems[-1]


def test_missing_file_and_unknown_suffix(tmp_path):
    with pytest.raises(SchemaError, match="no such file"):
        read_records(tmp_path / "nope.jsonl", "prompt")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(SchemaError, match="unknown format '.csv'"):
        read_records(tmp_path / "x.csv", "prompt")


def test_broken_parquet_is_a_clear_error(tmp_path):
    path = tmp_path / "x.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SchemaError, match="not a readable Parquet file"):
        read_records(path, "prompt")


def test_atomic_write_leaves_the_old_file_when_interrupted(tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("old\n")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write("half of the new ")
            raise RuntimeError("disk full")
    assert path.read_text() == "old\n"
    assert os.listdir(tmp_path) == ["out.jsonl"]  # no temporary file left behind


def test_failed_export_writes_nothing(tmp_path):
    path = tmp_path / "pairs.parquet"

    class Boom(Comparison):
        def to_dict(self, *, drop_none=True):
            raise RuntimeError("cannot serialize")

    records = [Comparison(prompt="q", chosen="a", rejected="b"),
               Boom(prompt="q", chosen="c", rejected="d")]  # fmt: skip
    with pytest.raises(RuntimeError):
        write_records(path, records)
    assert not path.exists() and os.listdir(tmp_path) == []


HH_ROWS = [
    {"chosen": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: Like this.",
     "rejected": "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant: No."},
    {"chosen": "\n\nHuman: q\n\nAssistant: ", "rejected": "\n\nHuman: q\n\nAssistant: ok"},
    {"chosen": "\n\nHuman: x\n\nAssistant: a", "rejected": "\n\nHuman: y\n\nAssistant: b"},
]  # fmt: skip


def test_hh_import_splits_the_shared_prefix(tmp_path):
    path = write_lines(tmp_path / "hh.jsonl", [json.dumps(r) for r in HH_ROWS])
    result = import_hh(path)
    assert len(result.comparisons) == 1
    pair = result.comparisons[0]
    assert pair.prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how?\n\nAssistant:"
    assert (pair.chosen, pair.rejected) == (" Like this.", " No.")
    assert pair.prompt + pair.chosen == HH_ROWS[0]["chosen"]
    assert pair.where == f"{path}:1" and pair.source == "hh-rlhf"
    assert [s.split(": ", 1)[0] for s in result.skipped] == [f"{path}:2", f"{path}:3"]
    assert "chosen is empty" in result.skipped[0]
    assert "no prefix" in result.skipped[1]
    with pytest.raises(SchemaError, match=f"{path}:2"):
        import_hh(path, strict=True)


def test_read_comparisons_tells_hh_from_schema_files(tmp_path):
    hh = write_lines(tmp_path / "hh.jsonl", [json.dumps(HH_ROWS[0])])
    assert read_comparisons(hh).comparisons[0].chosen == " Like this."
    ours = tmp_path / "pairs.jsonl"
    write_records(ours, [Comparison(prompt="q", chosen="a", rejected="b")])
    assert read_comparisons(ours).comparisons[0].chosen == "a"


def test_hh_import_of_the_real_sample(hh_path):
    result = import_hh(hh_path)
    assert len(result.comparisons) + len(result.skipped) == 1600
    # Four rows of the sample have an empty chosen turn; each is reported by line.
    assert len(result.skipped) == 4
    assert all("chosen is empty" in s for s in result.skipped)
    for pair in result.comparisons:
        assert pair.prompt.startswith("\n\nHuman:") and pair.prompt.endswith("\n\nAssistant:")
