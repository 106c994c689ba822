"""GAtt consistency (Llama 2 Table 30): does a model keep an instruction given once, in the first turn, at
turn 1, 2, ..., N of a dialogue?

Each evaluation dialogue has one constraint in its system message and N user turns; the model answers every
turn after its own earlier answers. A checkable constraint (a style, a language) is kept at turn t when the
checker passes on answer t. A hobby or a public figure is kept when the model, asked after answer t "What is
your favourite hobby?" / "Who are you?" (asked aside: the probe and its answer never enter the dialogue),
names it. The table has a row per turn and a column per constraint family, before and after.
"""
from __future__ import annotations

import random
import statistics
from typing import Any, Callable, Sequence

from data.builtin.gatt import check_constraint, make_constraint
from data.gatt_synthesis import answers_probe, probe_question

Respond = Callable[[list[list[dict[str, str]]]], list[str]]  # conversations ending with a user turn -> answers
GROUPS = ("style", "language", "hobby", "figure")
# The "checkable" column the target applies to: constraints a checker tells on every answer and a
# program can enforce on a sampled target (the styles). A language has a checker but no program can write
# one, and a 135M model barely writes French or Spanish, so it is reported in its own column, not in this one.
CHECKABLE = ("style",)


def eval_instructions(lists: dict[str, Sequence[str]], n: int, seed: int, terse_share: float = 0.5,
                      families: Sequence[str] = GROUPS, style_share: float | None = None) -> list[dict[str, Any]]:
    """``n`` single-constraint instructions cycling over the families and, within each, over its values (so
    every style is measured), terse with ``terse_share``: [{"constraint", "text", "terse"}]. With
    ``style_share``, that share of the dialogues are styles and the rest cycle over the other families."""
    rng = random.Random(f"gatt-eval:{seed}")
    families = [f for f in families if lists.get(f)]
    order = {f: rng.sample(list(lists[f]), len(lists[f])) for f in families}
    others = [f for f in families if f != "style"]
    n_style = round(n * style_share) if style_share is not None and "style" in families and others else None
    out = []
    for i in range(n):
        if n_style is None:
            family, rank = families[i % len(families)], i // len(families)
        elif i < n_style:
            family, rank = "style", i
        else:
            family, rank = others[(i - n_style) % len(others)], (i - n_style) // len(others)
        values = order[family]
        constraint = make_constraint(family, values[rank % len(values)], rng)
        terse = rng.random() < terse_share
        out.append({"constraint": constraint, "text": constraint["terse" if terse else "instruction"],
                    "terse": terse})
    return out


def kept(constraint: dict[str, str], answer: str, probe_answer: str | None) -> bool:
    """Whether turn t kept the constraint: the checker on the answer, else the probe's answer names it."""
    verdict = check_constraint(constraint, answer)
    if verdict is not None:
        return verdict
    return probe_answer is not None and answers_probe(constraint, probe_answer)


def adherence(respond: Respond, instructions: Sequence[dict[str, Any]], dialogues: Sequence[Sequence[str]],
              turns: int) -> dict[str, Any]:
    """Run each instruction over a dialogue of ``turns`` user messages (the instruction only in the system
    message) with ``respond`` answering all dialogues of a turn in one call; return per-dialogue records
    (answers, probe answers, kept per turn) and the share kept per family and turn."""
    if len(dialogues) < len(instructions) or any(len(d) < turns for d in dialogues[:len(instructions)]):
        raise ValueError(f"adherence: need {len(instructions)} dialogues of at least {turns} user turns")
    histories = [[{"role": "system", "content": inst["text"]}] for inst in instructions]
    records = [{"constraint": inst["constraint"], "instruction": inst["text"], "terse": inst["terse"], "turns": []}
               for inst in instructions]
    probing = [i for i, inst in enumerate(instructions) if probe_question(inst["constraint"])]
    # The probe after answer t is asked in the same batch as turn t + 1 (it is aside: it never enters the
    # dialogue), so a dialogue of N turns costs N + 1 generation calls, not 2N.
    pending: list[list[dict[str, str]]] = []
    for t in range(turns + 1):
        asked = []
        if t < turns:
            for history, dialogue in zip(histories, dialogues):
                history.append({"role": "user", "content": dialogue[t]})
            asked = [list(h) for h in histories]
        replies = respond(asked + pending) if asked or pending else []
        answers, probe_answers = replies[:len(asked)], dict(zip(probing, replies[len(asked):]))
        if t > 0:
            for i, record in enumerate(records):
                turn = record["turns"][-1]
                turn["probe_answer"] = probe_answers.get(i)
                turn["kept"] = kept(record["constraint"], turn["answer"], probe_answers.get(i))
        if t == turns:
            break
        for history, reply, record in zip(histories, answers, records):
            history.append({"role": "assistant", "content": reply})
            record["turns"].append({"turn": t + 1, "answer": reply, "probe_answer": None, "kept": None})
        pending = [histories[i] + [{"role": "user", "content": probe_question(instructions[i]["constraint"])}]
                   for i in probing]
    return {"turns": turns, "dialogues": records, "kept": kept_shares(records, turns)}


def kept_shares(records: Sequence[dict[str, Any]], turns: int) -> dict[str, list[float | None]]:
    """Share of dialogues keeping their constraint at each turn, per family and for the checkable ones
    (``CHECKABLE``: the styles) together."""
    out: dict[str, list[float | None]] = {}
    groups = {g: [r for r in records if r["constraint"]["type"] == g] for g in GROUPS}
    groups["checkable"] = [r for r in records if r["constraint"]["type"] in CHECKABLE]
    for name, group in groups.items():
        if group:
            out[name] = [statistics.fmean(r["turns"][t]["kept"] for r in group) for t in range(turns)]
    return out


def per_constraint(records: Sequence[dict[str, Any]]) -> dict[str, list[float]]:
    """Share kept per turn for each constraint value (e.g. style:all_caps)."""
    by: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        by.setdefault(f"{r['constraint']['type']}:{r['constraint']['value']}", []).append(r)
    return {k: [statistics.fmean(r["turns"][t]["kept"] for r in rs) for t in range(len(rs[0]["turns"]))]
            for k, rs in sorted(by.items())}


def format_table30(before: dict[str, Any] | None, after: dict[str, Any], labels: tuple[str, str] = ("before",
                   "after GAtt")) -> str:
    """Markdown in the layout of Table 30: a row per dialogue turn, for each family the share kept before
    and after (n = dialogues of that family)."""
    groups = [g for g in ("checkable", *GROUPS) if g in after["kept"] and (g,) != CHECKABLE]
    counts = {g: sum(1 for r in after["dialogues"] if g == "checkable" and r["constraint"]["type"] in
                     CHECKABLE or r["constraint"]["type"] == g) for g in groups}
    head = "| turn | " + " | ".join(f"{g} (n={counts[g]}) {label}" for g in groups
                                     for label in (labels if before else labels[1:])) + " |"
    lines = [head, "|---|" + "---|" * (len(groups) * (2 if before else 1))]
    for t in range(after["turns"]):
        cells = []
        for g in groups:
            for result in ((before, after) if before else (after,)):
                value = result["kept"].get(g, [None] * after["turns"])[t]
                cells.append("–" if value is None else f"{100 * value:.0f}%")
        lines.append(f"| {t + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
