"""IFEval instructions held across turns (eval/ifeval.py): every check on labelled answers, which records are
used, IFEval's wording in the system message, and the per-turn shares on a scripted model."""
from __future__ import annotations

import json

import pytest

from eval import ifeval


def record(key, ids, kwargs, prompt="Write a note."):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


LABELLED = [  # (instruction id, kwargs, answer, kept)
    ("change_case:english_lowercase", {}, "all lower case here.", True),
    ("change_case:english_lowercase", {}, "One capital.", False),
    ("change_case:english_capital", {}, "ALL CAPS, 2 NUMBERS.", True),
    ("change_case:english_capital", {}, "ALL CAPS but one.", False),
    ("punctuation:no_comma", {}, "No commas at all.", True),
    ("punctuation:no_comma", {}, "Well, one comma.", False),
    ("keywords:forbidden_words", {"forbidden_words": ["nose", "copy"]}, "A noses-free copyist text.", True),
    ("keywords:forbidden_words", {"forbidden_words": ["nose", "copy"]}, "Do not Copy this.", False),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 4}, "Three short words", True),
    ("length_constraints:number_words", {"relation": "less than", "num_words": 4}, "Four words in here", False),
    ("detectable_format:title", {}, "<<A title>>\nBody.", True),
    ("detectable_format:title", {}, "<< >> no title, <<\n>>", False),
]


@pytest.mark.parametrize("instruction,kwargs,text,ok", LABELLED)
def test_every_check_on_labelled_answers(instruction, kwargs, text, ok):
    assert ifeval.keeps(record(1, [instruction], [kwargs]), text) is ok


def test_the_labelled_examples_cover_every_check_and_an_empty_answer_keeps_nothing():
    assert {row[0] for row in LABELLED} == set(ifeval.CHECKS)
    for instruction, kwargs, _, _ in LABELLED:
        assert ifeval.keeps(record(1, [instruction], [kwargs]), "  ") is False


def test_only_records_whose_every_instruction_is_checked_are_used(tmp_path):
    rows = [record(1, ["punctuation:no_comma"], [{"num_words": None}]),
            record(2, ["punctuation:no_comma", "startend:quotation"], [{}, {}]),
            record(3, ["length_constraints:number_words"], [{"relation": "at least", "num_words": 300}]),
            record(4, ["length_constraints:number_words"], [{"relation": "less than", "num_words": 50}])]
    path = tmp_path / "input_data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r["key"] for r in ifeval.load_records(path)] == [1, 4]
    assert [r["key"] for r in ifeval.load_records(path, limit=1)] == [1]
    assert ifeval.system_message(rows[0]) == "In your entire response, refrain from the use of any commas."
    assert ifeval.system_message(rows[3]) == "Answer with less than 50 words."


def test_multi_turn_gives_the_share_kept_at_each_turn():
    records = [record(1, ["change_case:english_capital"], [{}], prompt="First."),
               record(2, ["punctuation:no_comma"], [{}], prompt="Second.")]
    seen = []

    def respond(conversations):
        seen.append(conversations)
        turn = len(conversations[0]) // 2  # system, then user/assistant pairs: turn 1, 2, 3
        # the first dialogue answers in capitals for two turns, the second never uses a comma
        return ["YES SIR." if turn <= 2 else "no.", "fine then."]

    result = ifeval.multi_turn(respond, records, [["q2", "q3"], ["r2", "r3"]], 3)
    assert result["kept"] == [1.0, 1.0, 0.5]
    assert result["by_instruction"]["change_case:english_capital"] == [1.0, 1.0, 0.0]
    first = seen[0][0]
    assert first[0]["role"] == "system" and "capital letters" in first[0]["content"]
    assert first[1] == {"role": "user", "content": "First."}
    assert [m["content"] for m in seen[2][1] if m["role"] == "user"] == ["Second.", "r2", "r3"]
    assert "| 3 | 50% |" in ifeval.format_table({"policy": result})
