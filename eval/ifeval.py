"""IFEval instructions held across turns: does a policy keep a checkable instruction of IFEval (Zhou et al.,
2023) given once, in the first turn, at turns 1..N of a dialogue (the GAtt question on data written by others)?

Each dialogue: the record's instructions in IFEval's own wording as the system message, the record's prompt as
the first user turn, then ``turns - 1`` built-in held-out questions; the model answers every turn after its own
earlier answers and each answer is checked against every instruction of the record. Only instructions that
hold for a whole answer whatever it is about and that a length-capped answer can keep are used (lowercase,
capitals, no comma, forbidden words, fewer than N words, a <<title>>); records with any other instruction are
left out. The checks follow IFEval's instructions.py, without its language detection (an answer counts as
English here) and with words counted by a regex instead of NLTK's tokenizer.
"""
from __future__ import annotations

import json
import re
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

Respond = Callable[[list[list[dict[str, str]]]], list[str]]  # conversations ending with a user turn -> answers


def _words(text: str) -> int:
    return len(re.findall(r"\w+", text))


def _forbidden(text: str, forbidden_words: Sequence[str]) -> bool:
    return not any(re.search(rf"\b{re.escape(w)}\b", text, flags=re.IGNORECASE) for w in forbidden_words)


def _fewer_words(text: str, relation: str, num_words: int) -> bool:
    return _words(text) < num_words if relation == "less than" else _words(text) >= num_words


def _title(text: str) -> bool:
    return any(t.lstrip("<").rstrip(">").strip() for t in re.findall(r"<<[^\n]+>>", text))


# instruction id -> (IFEval's description of it, with the kwargs; the check of an answer)
CHECKS: dict[str, tuple[Callable[..., str], Callable[..., bool]]] = {
    "change_case:english_lowercase": (
        lambda: "Your entire response should be in English, and in all lowercase letters. No capital letters are "
                "allowed.",
        lambda text: bool(text.strip()) and text == text.lower()),
    "change_case:english_capital": (
        lambda: "Your entire response should be in English, and in all capital letters.",
        lambda text: bool(text.strip()) and text == text.upper()),
    "punctuation:no_comma": (
        lambda: "In your entire response, refrain from the use of any commas.",
        lambda text: bool(text.strip()) and "," not in text),
    "keywords:forbidden_words": (
        lambda forbidden_words: f"Do not include keywords {forbidden_words} in the response.",
        lambda text, forbidden_words: bool(text.strip()) and _forbidden(text, forbidden_words)),
    "length_constraints:number_words": (
        lambda relation, num_words: f"Answer with {relation} {num_words} words.",
        lambda text, relation, num_words: bool(text.strip()) and _fewer_words(text, relation, num_words)),
    "detectable_format:title": (
        lambda: "Your answer must contain a title, wrapped in double angular brackets, such as <<poem of joy>>.",
        _title),
}


def _kwargs(raw: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if v is not None}


def usable(record: dict[str, Any]) -> bool:
    """Whether every instruction of an IFEval record is one checked here (number_words only with "less than":
    "at least 300 words" cannot hold under an answer length cap)."""
    for instruction, kwargs in zip(record["instruction_id_list"], record["kwargs"]):
        if instruction not in CHECKS:
            return False
        if instruction == "length_constraints:number_words" and kwargs.get("relation") != "less than":
            return False
    return True


def load_records(path: str | Path, limit: int | None = None) -> list[dict[str, Any]]:
    """The usable records of IFEval's input_data.jsonl, in file order (the first ``limit``)."""
    records = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    kept = [r for r in records if usable(r)]
    return kept[:limit] if limit else kept


def system_message(record: dict[str, Any]) -> str:
    return " ".join(CHECKS[i][0](**_kwargs(k)) for i, k in zip(record["instruction_id_list"], record["kwargs"]))


def keeps(record: dict[str, Any], answer: str) -> bool:
    """Whether an answer keeps every instruction of the record."""
    return all(CHECKS[i][1](answer, **_kwargs(k)) for i, k in zip(record["instruction_id_list"], record["kwargs"]))


def multi_turn(respond: Respond, records: Sequence[dict[str, Any]], followups: Sequence[Sequence[str]],
               turns: int) -> dict[str, Any]:
    """Every record over ``turns`` turns (its prompt, then ``turns - 1`` questions of ``followups``, one list per
    record); the share of dialogues keeping all their instructions at each turn, overall and per instruction."""
    if len(followups) < len(records) or any(len(f) < turns - 1 for f in followups[:len(records)]):
        raise ValueError(f"multi_turn: need {len(records)} follow-up lists of at least {turns - 1} questions")
    histories = [[{"role": "system", "content": system_message(r)}] for r in records]
    rows = [{"key": r["key"], "instructions": r["instruction_id_list"], "system": h[0]["content"], "turns": []}
            for r, h in zip(records, histories)]
    for t in range(turns):
        for history, record, questions in zip(histories, records, followups):
            history.append({"role": "user", "content": record["prompt"] if t == 0 else questions[t - 1]})
        answers = respond([list(h) for h in histories])
        for history, row, record, reply in zip(histories, rows, records, answers):
            history.append({"role": "assistant", "content": reply})
            row["turns"].append({"turn": t + 1, "user": history[-2]["content"], "answer": reply,
                                 "kept": keeps(record, reply)})
    kept = [statistics.fmean(row["turns"][t]["kept"] for row in rows) for t in range(turns)] if rows else []
    by_instruction: dict[str, list[float]] = {}
    for instruction in sorted({i for r in records for i in r["instruction_id_list"]}):
        group = [row for row in rows if instruction in row["instructions"]]
        by_instruction[instruction] = [statistics.fmean(row["turns"][t]["kept"] for row in group)
                                       for t in range(turns)]
    return {"turns": turns, "n": len(rows), "kept": kept, "by_instruction": by_instruction, "dialogues": rows}


def format_table(results: dict[str, dict[str, Any]]) -> str:
    """Markdown: a row per turn, a column per policy (share of dialogues keeping every instruction)."""
    names = list(results)
    if not names:
        return ""
    turns = max(r["turns"] for r in results.values())
    lines = ["| turn | " + " | ".join(f"{name} (n={results[name]['n']})" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    for t in range(turns):
        cells = [f"{100 * results[n]['kept'][t]:.0f}%" if t < len(results[n]["kept"]) else "–" for n in names]
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
