"""Property-based fuzzing of everything a user hands the pipeline: recipe YAML (with --set overrides) and
data rows (JSONL, JSON, CSV). Whatever the input, the result is either valid or one of the project's own
errors (RecipeError, DataError) — never another exception, which would reach the user as a traceback."""
from __future__ import annotations

import csv
import io
import json
import math
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import loaders, sources
from data.converters import CONVERSATION_FORMATS, PREFERENCE_FORMATS
from data.records import ROLES, DataError
from stages.recipe import DataSource, RecipeError, describe, dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parent.parent
TINY_LINES = (ROOT / "recipes" / "tiny.yaml").read_text().splitlines()
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------ recipes

KEYS = sorted({line.split(" ")[0].rstrip(":") for line in describe()})
NAMES = sorted({part for key in KEYS for part in key.split(".")})

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**20), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["tiny", "hub", "builtin", "cosine", "auto", "1e-5",
                                                           ".nan", "-.inf", "../x", "train", "drop"]))
yaml_data = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4),
    st.dictionaries(st.one_of(st.sampled_from(NAMES), st.text(max_size=6)), inner, max_size=5)), max_leaves=20)
recipe_mapping = st.dictionaries(st.sampled_from(NAMES), yaml_data, max_size=6)


@st.composite
def recipe_texts(draw) -> str:
    """Arbitrary text, YAML of arbitrary structure over the recipe's own key names, or tiny.yaml with
    lines dropped, repeated or mangled."""
    kind = draw(st.integers(0, 2))
    if kind == 0:
        return draw(st.text(max_size=200))
    if kind == 1:
        return yaml.safe_dump(draw(recipe_mapping), allow_unicode=True)
    lines = list(TINY_LINES)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        action = draw(st.sampled_from(["drop", "repeat", "replace"]))
        if action == "drop":
            del lines[i]
        elif action == "repeat":
            lines.insert(i, lines[i])
        else:
            lines[i] = draw(st.text(max_size=40))
        if not lines:
            break
    return "\n".join(lines) + "\n"


overrides = st.lists(st.builds(lambda key, value: f"{key}={value}",
                               st.one_of(st.sampled_from(KEYS), st.text(max_size=12)),
                               st.one_of(st.sampled_from(["1", "0", "-1", ".nan", "[", "{a: 1, a: 2}", "[{source: "
                                                          "builtin, n: 2}]", "true", "null", "''"]),
                                         st.text(max_size=12))), max_size=3)


@FUZZ
@given(text=recipe_texts(), sets=overrides)
def test_any_recipe_text_loads_or_is_a_recipe_error(text, sets):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "recipe.yaml"
        path.write_bytes(text.encode("utf-8", errors="replace"))  # hypothesis text may hold lone surrogates
        try:
            recipe = load_recipe(path, sets)
        except RecipeError:
            return
        # a valid recipe is what it says it is: shown and loaded again, it is the same recipe
        again = Path(tmp) / "again.yaml"
        again.write_text(dump_recipe(recipe), encoding="utf-8")
        assert load_recipe(again) == recipe


# --------------------------------------------------------------------------------------- data

ROW_KEYS = ["messages", "prompt", "completion", "chosen", "rejected", "rating", "margin", "chosen_safe",
            "rejected_safe", "meta", "instruction", "input", "response1", "response2", "annotator1", "annotator2",
            "response_0", "response_1", "better_response_id", "safer_response_id", "is_response_0_safe",
            "is_response_1_safe", "score_chosen", "score_rejected", "text"]
json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**30), st.floats(allow_nan=True),
                         st.text(max_size=20), st.sampled_from(["better", "significantly_better", "0", "1", "2",
                                                                "\n\nHuman: hi\n\nAssistant: yo", "true"]))
messages = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.one_of(st.sampled_from(ROLES), json_scalars),
                           "content": st.one_of(st.text(max_size=20), json_scalars)}),
    json_scalars), max_size=4)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)), max_leaves=10)
USER, ANSWER = {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}
# One valid row of every format; the fuzzer mostly starts from one of these and breaks it a little.
TEMPLATES = [
    {"messages": [USER, ANSWER]},
    {"prompt": "Hi", "completion": "Hello"},
    {"prompt": "Hi"},
    {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away", "rating": "better", "margin": 1.0,
     "chosen_safe": True, "rejected_safe": False, "meta": {"id": 1}},
    {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away"},
    {"chosen": [USER, ANSWER], "rejected": [USER, {"role": "assistant", "content": "Go away"}]},
    {"instruction": "Greet", "input": "", "response1": "Hello", "response2": "Go away", "annotator1": 1,
     "annotator2": 1, "annotator3": 0},
    {"prompt": "Hi", "response_0": "Hello", "response_1": "Go away", "is_response_0_safe": True,
     "is_response_1_safe": False, "better_response_id": 0, "safer_response_id": 0},
    {"prompt": "Hi", "chosen": "Hello", "rejected": "Go away", "score_chosen": 8, "score_rejected": 3},
]


@st.composite
def near_valid_rows(draw) -> dict:
    row = json.loads(json.dumps(draw(st.sampled_from(TEMPLATES))))
    for _ in range(draw(st.integers(0, 2))):
        key = draw(st.sampled_from(sorted(row) + ROW_KEYS))
        action = draw(st.sampled_from(["drop", "value", "non-finite", "same answers"]))
        if action == "drop":
            row.pop(key, None)
        elif action == "value":
            row[key] = draw(st.one_of(json_values, messages))
        elif action == "non-finite":
            row[key] = draw(st.sampled_from([math.nan, math.inf, -math.inf, 10**400, "nan"]))
        elif "chosen" in row:
            row["rejected"] = f"  {row['chosen']}\n" if isinstance(row["chosen"], str) else row["chosen"]
    return row


rows = st.one_of(
    st.sampled_from(TEMPLATES), near_valid_rows(), near_valid_rows(),
    st.dictionaries(st.sampled_from(ROW_KEYS), st.one_of(json_values, messages), max_size=8),
    json_values)
row_lists = st.one_of(st.lists(rows, max_size=5), st.lists(near_valid_rows(), min_size=1, max_size=3))


def _write(path: Path, kind: str, data: list, garbage: bytes) -> None:
    if kind == "jsonl":
        text = "".join(json.dumps(row) + "\n" for row in data).encode()  # NaN and Infinity written as such
        path.write_bytes(text + garbage)
    elif kind == "json":
        path.write_bytes(json.dumps(data).encode() + (garbage if garbage[:1] == b"\xff" else b""))
    else:
        columns = sorted({k for row in data if isinstance(row, dict) for k in row}) or ["prompt"]
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(columns)
        for row in data:
            cells = row if isinstance(row, dict) else {"prompt": row}
            writer.writerow([v if isinstance(v, str) else json.dumps(v) for v in
                             (cells.get(c, "") for c in columns)])
        path.write_bytes(out.getvalue().encode() + garbage)


def _check(records: list, kind: str) -> None:
    """What a stage relies on in every record it gets."""
    loaders.fingerprint_records(records)  # canonical JSON exists: the registry fingerprints the data
    for record in records:
        if kind == "preference":
            assert isinstance(record.chosen, str) and isinstance(record.rejected, str)
            assert record.margin is None or math.isfinite(record.margin)
            messages_ = record.prompt
        else:
            messages_ = record.messages
        assert messages_ and all(isinstance(m["content"], str) and m["role"] in ROLES for m in messages_)


@FUZZ
@given(data=row_lists, kind=st.sampled_from(["jsonl", "json", "csv"]),
       garbage=st.one_of(st.just(b""), st.sampled_from([b"\xff\xfe not utf-8\n", b"{not json\n", b"[1, 2\n",
                                                         b"\x00\n", b"NaN\n"])),
       fmt=st.one_of(st.just("auto"), st.just("auto"), st.sampled_from([*CONVERSATION_FORMATS,
                                                                         *PREFERENCE_FORMATS])))
def test_any_rows_load_or_are_a_data_error(data, kind, garbage, fmt):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"rows.{kind}"
        _write(path, kind, data, garbage)
        for load, record_kind in ((loaders.load_conversations, "conversation"),
                                  (loaders.load_preferences, "preference")):
            try:
                records = load(path, format=fmt)
            except DataError:
                continue
            _check(records, record_kind)


@FUZZ
@given(data=row_lists, identical=st.sampled_from(["drop", "error"]),
       part=st.sampled_from(["all", "train", "test"]), n=st.one_of(st.none(), st.integers(1, 3)))
def test_any_rows_through_a_recipe_source_load_or_are_a_project_error(data, identical, part, n):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.jsonl"
        _write(path, "jsonl", data, b"")
        src = [DataSource(source=str(path), part=part, n=n)]
        try:
            records = sources.load_preferences(src, 0, "reward.helpful.data", identical=identical)
        except (DataError, RecipeError):
            records = None
        if records is not None:
            _check(records, "preference")
        try:
            records = sources.load_conversations(src, 0, "sft.data")
        except (DataError, RecipeError):
            return
        _check(records, "conversation")
