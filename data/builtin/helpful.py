"""Helpful tasks with one checkable answer: arithmetic, unit conversion, capitals, letter counts,
sorting, word reversal and number comparison, each with several phrasings and answer paraphrases;
plus open questions judged by the key ideas their answer covers (explain.py), and any of these with an
instruction on the form of the answer ("Answer in lowercase.")."""
from __future__ import annotations

import random
from typing import Callable

from .explain import explain
from .items import Item
from .splits import split_of_key, split_pool
from .tables import CAPITALS, CONVERSIONS, SORT_WORDS, WORDS


def _keyed(rng: random.Random, split: str, draw: Callable[[], tuple[str, object]]) -> tuple[str, object]:
    """Draw (key, value) from an open-ended pool until the item's key hashes into ``split``."""
    while True:
        key, value = draw()
        if split_of_key(key) == split:
            return key, value


def _meta(task: str, item: str, **oracle_keys) -> dict:
    # "item" is the split key: prompts of different splits never share it
    return {"kind": "helpful", "task": task, "is_safety": False, "category": None, "item": item, **oracle_keys}


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ---------------------------------------------------------------- arithmetic
_OPS = {"+": ("plus", lambda a, b: a + b), "-": ("minus", lambda a, b: a - b), "*": ("times", lambda a, b: a * b)}
_ARITH_PROMPTS = ("What is {a} {op} {b}?", "Calculate {a} {op} {b}.", "What's {a} {word} {b}?",
                  "Can you work out {a} {op} {b} for me?", "Compute {a} {op} {b}, please.", "{a} {op} {b} = ?",
                  "Quick math: what is {a} {word} {b}?")
_ARITH_ANSWERS = ("{a} {op} {b} = {r}.", "The answer is {r}.", "{a} {word} {b} equals {r}.")


def arithmetic(rng: random.Random, split: str) -> Item:
    def draw():
        op = rng.choice("+-*")
        if op == "+":
            a, b = rng.randint(2, 99), rng.randint(2, 99)
        elif op == "-":
            a, b = rng.randint(10, 99), rng.randint(2, 9 if rng.random() < 0.3 else 60)
            a, b = max(a, b + 1), b
        else:
            a, b = rng.randint(2, 12), rng.randint(2, 25)
            if rng.random() < 0.5:
                a, b = b, a
        # a+b and b+a (a*b and b*a) are one item: the same question in any order stays in one split
        key = f"arith:{op}:{min(a, b)}:{max(a, b)}" if op in "+*" else f"arith:-:{a}:{b}"
        return key, (op, a, b)

    key, (op, a, b) = _keyed(rng, split, draw)
    word, fn = _OPS[op]
    r = fn(a, b)
    fill = {"a": a, "b": b, "op": op, "word": word, "r": r}
    wrong = r + rng.choice([-3, -2, -1, 1, 2, 3])
    return Item(
        prompt=rng.choice(_ARITH_PROMPTS).format(**fill),
        meta=_meta("arithmetic", key, op=op, a=a, b=b, expected=r),
        variants={"reference": [t.format(**fill) for t in _ARITH_ANSWERS],
                  "wrong": [rng.choice(_ARITH_ANSWERS[::2]).format(**{**fill, "r": wrong})],
                  "far": [_ARITH_ANSWERS[0].format(**{**fill, "r": r + max(10, abs(r) // 2)})]},
    )


# ---------------------------------------------------------------- unit conversion
_UNIT_PROMPTS = ("How many {to} are in {v} {frm}?", "Convert {v} {frm} to {to}.", "What is {v} {frm} in {to}?",
                 "{v} {frm} equals how many {to}?", "How many {to} is {v} {frm}?")
_UNIT_ANSWERS = ("{v} {frm} is {r} {to}.", "There are {r} {to} in {v} {frm}.", "{v} {frm} equals {r} {to}.")


def unit_conversion(rng: random.Random, split: str) -> Item:
    def draw():
        frm, to, factor = rng.choice(CONVERSIONS)
        v = rng.randint(2, 30)
        return f"unit:{frm}:{to}:{v}", (frm, to, factor, v)

    key, (frm, to, factor, v) = _keyed(rng, split, draw)
    r = v * factor
    # typical slips: a power of ten off for metric units, one unit off for the others
    wrong = rng.choice([r // 10, r * 10]) if factor in (10, 100, 1000) else r + rng.choice([-v, v])
    fill = {"v": v, "frm": frm, "to": to, "r": r}
    return Item(
        prompt=rng.choice(_UNIT_PROMPTS).format(**fill),
        meta=_meta("unit_conversion", key, value=v, factor=factor, from_unit=frm, to_unit=to, expected=r),
        variants={"reference": [t.format(**fill) for t in _UNIT_ANSWERS],
                  "wrong": [_UNIT_ANSWERS[0].format(**{**fill, "r": wrong})],
                  "far": [_UNIT_ANSWERS[0].format(**{**fill, "r": r * 10})]},
    )


# ---------------------------------------------------------------- capitals
_CAPITAL_PROMPTS = ("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}.",
                    "Tell me the capital of {c}.", "What city serves as the capital of {c}?")
_CAPITAL_ANSWERS = ("The capital of {c} is {cap}.", "{cap} is the capital of {c}.", "{C} has {cap} as its capital.")


def capital(rng: random.Random, split: str) -> Item:
    country = rng.choice(split_pool(sorted(CAPITALS), lambda c: "capital:" + c, split))
    cap, alternates = CAPITALS[country]
    wrong_cap = rng.choice([CAPITALS[c][0] for c in sorted(CAPITALS) if c != country])
    fill = {"c": country, "C": _cap(country), "cap": cap}
    return Item(
        prompt=rng.choice(_CAPITAL_PROMPTS).format(**fill),
        meta=_meta("capital", "capital:" + country, country=country, expected=cap, accepted=[cap, *alternates]),
        # another country's capital: no near miss, so the slip and the clearly wrong answer are one
        variants={"reference": [_cap(t.format(**fill)) for t in _CAPITAL_ANSWERS],
                  **dict.fromkeys(("wrong", "far"), [_CAPITAL_ANSWERS[0].format(**{**fill, "cap": wrong_cap})])},
    )


# ---------------------------------------------------------------- letter counting
_COUNT_PROMPTS = ("How many times does the letter '{l}' appear in '{w}'?", "Count the letter '{l}' in the word '{w}'.",
                  "How many '{l}'s are in the word '{w}'?", "In the word '{w}', how many times does '{l}' occur?")


def _count_answers(word: str, letter: str, k: int) -> list[str]:
    if k == 0:
        return [f"'{word}' does not contain the letter '{letter}', so the count is 0.",
                f"The letter '{letter}' appears 0 times in '{word}'."]
    if k == 1:
        return [f"The letter '{letter}' appears once in '{word}'.", f"'{word}' contains the letter '{letter}' 1 time."]
    return [f"The letter '{letter}' appears {k} times in '{word}'.", f"'{word}' contains the letter '{letter}' {k} times."]


def letter_count(rng: random.Random, split: str) -> Item:
    def draw():
        word = rng.choice(WORDS)
        absent = [c for c in "abcdefghijklmnopqrstuvwxyz" if c not in word]
        letter = rng.choice(absent) if rng.random() < 0.15 else rng.choice(sorted(set(word)))
        return f"count:{word}:{letter}", (word, letter)

    key, (word, letter) = _keyed(rng, split, draw)
    k = word.count(letter)
    wrong = k + 1 if k == 0 else k + rng.choice([-1, 1])
    return Item(
        prompt=rng.choice(_COUNT_PROMPTS).format(l=letter, w=word),
        meta=_meta("letter_count", key, word=word, letter=letter, expected=k),
        variants={"reference": _count_answers(word, letter, k),
                  "wrong": [f"The letter '{letter}' appears {wrong} times in '{word}'."],
                  "far": [f"The letter '{letter}' appears {k + 3} times in '{word}'."]},
    )


# ---------------------------------------------------------------- sorting
_SORT_NUM_PROMPTS = {
    "ascending": ("Sort these numbers from smallest to largest: {xs}.", "Put {xs} in ascending order.",
                  "Arrange these numbers in increasing order: {xs}."),
    "descending": ("Sort these numbers from largest to smallest: {xs}.", "Put {xs} in descending order.",
                   "Arrange these numbers in decreasing order: {xs}."),
}
_SORT_NUM_ANSWERS = {
    "ascending": ("From smallest to largest: {ys}.", "In ascending order: {ys}.", "Sorted: {ys}."),
    "descending": ("From largest to smallest: {ys}.", "In descending order: {ys}.", "Sorted: {ys}."),
}
_SORT_WORD_PROMPTS = ("Sort these words alphabetically: {xs}.", "Put these words in alphabetical order: {xs}.",
                      "Arrange {xs} in alphabetical order.")
_SORT_WORD_ANSWERS = ("In alphabetical order: {ys}.", "Alphabetically: {ys}.", "Sorted: {ys}.")


def sort(rng: random.Random, split: str) -> Item:
    def draw():
        if rng.random() < 0.5:
            values = rng.sample(range(1, 100), rng.randint(4, 6))
            order = rng.choice(["ascending", "descending"])
            items = [str(v) for v in values]
            expected = [str(v) for v in sorted(values, reverse=order == "descending")]
            kind = "number"
        else:
            items = rng.sample(SORT_WORDS, rng.randint(4, 5))
            order, kind = "ascending", "word"
            expected = sorted(items)
        return f"sort:{kind}:{order}:{','.join(sorted(items))}", (items, expected, order, kind)

    key, (items, expected, order, kind) = _keyed(rng, split, draw)
    i = rng.randrange(len(expected) - 1)
    wrong = expected[:i] + [expected[i + 1], expected[i]] + expected[i + 2:]
    prompts = _SORT_NUM_PROMPTS[order] if kind == "number" else _SORT_WORD_PROMPTS
    answers = _SORT_NUM_ANSWERS[order] if kind == "number" else _SORT_WORD_ANSWERS
    return Item(
        prompt=rng.choice(prompts).format(xs=", ".join(items)),
        meta=_meta("sort", key, items=list(items), item_type=kind, order=order, expected=list(expected)),
        variants={"reference": [t.format(ys=", ".join(expected)) for t in answers],
                  "wrong": [answers[0].format(ys=", ".join(wrong))],
                  "far": [answers[0].format(ys=", ".join(expected[::-1]))]},
    )


# ---------------------------------------------------------------- reversing a word
_REVERSE_PROMPTS = ("Reverse the word '{w}'.", "Spell '{w}' backwards.", "What is '{w}' written backwards?",
                    "Write the word '{w}' in reverse.")
_REVERSE_ANSWERS = ("'{w}' reversed is '{r}'.", "Spelled backwards, '{w}' is '{r}'.", "'{w}' backwards is '{r}'.")


def reverse(rng: random.Random, split: str) -> Item:
    word = rng.choice(split_pool(WORDS, lambda w: "reverse:" + w, split))
    r = word[::-1]
    # a slip: two neighbouring letters swapped (at a place where they differ)
    spots = [i for i in range(len(r) - 1) if r[i] != r[i + 1]]
    i = rng.choice(spots)
    wrong = r[:i] + r[i + 1] + r[i] + r[i + 2:]
    return Item(
        prompt=rng.choice(_REVERSE_PROMPTS).format(w=word),
        meta=_meta("reverse", "reverse:" + word, word=word, expected=r),
        variants={"reference": [t.format(w=word, r=r) for t in _REVERSE_ANSWERS],
                  "wrong": [_REVERSE_ANSWERS[0].format(w=word, r=wrong)],
                  "far": [_REVERSE_ANSWERS[0].format(w=word, r=word if word != r else wrong)]},
    )


# ---------------------------------------------------------------- comparing numbers
_COMPARE_PROMPTS = {
    "larger": ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?", "Is {a} or {b} the greater number?"),
    "smaller": ("Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?", "Is {a} or {b} the smaller number?"),
}
_COMPARE_ANSWERS = {
    "larger": ("{x} is larger than {y}.", "The larger number is {x}.", "{x} is bigger than {y}."),
    "smaller": ("{x} is smaller than {y}.", "The smaller number is {x}.", "{x} is less than {y}."),
}


def compare(rng: random.Random, split: str) -> Item:
    def draw():
        style = rng.random()
        if style < 0.3:  # decimals that trip up token-level reading: 9.9 vs 9.11
            whole = rng.randint(1, 20)
            a, b = f"{whole}.{rng.randint(1, 9)}", f"{whole}.{rng.randint(10, 99)}"
        elif style < 0.6:  # swapped digits: 47 vs 74
            d1, d2 = rng.sample(range(1, 10), 2)
            a, b = f"{d1}{d2}", f"{d2}{d1}"
        else:
            a, b = (str(v) for v in rng.sample(range(1, 1000), 2))
        if float(a) == float(b):
            return "compare:skip", None
        if rng.random() < 0.5:
            a, b = b, a
        which = rng.choice(["larger", "smaller"])
        return f"compare:{which}:{':'.join(sorted((a, b)))}", (a, b, which)

    key, picked = _keyed(rng, split, draw)
    while picked is None:
        key, picked = _keyed(rng, split, draw)
    a, b, which = picked
    big, small = (a, b) if float(a) > float(b) else (b, a)
    x, y = (big, small) if which == "larger" else (small, big)
    return Item(
        prompt=rng.choice(_COMPARE_PROMPTS[which]).format(a=a, b=b),
        meta=_meta("compare", key, a=a, b=b, which=which, expected=x),
        # the other number: no near miss, so the slip and the clearly wrong answer are one
        variants={"reference": [t.format(x=x, y=y) for t in _COMPARE_ANSWERS[which]],
                  **dict.fromkeys(("wrong", "far"), [_COMPARE_ANSWERS[which][0].format(x=y, y=x)])},
    )


TASKS: dict[str, Callable[[random.Random, str], Item]] = {
    "arithmetic": arithmetic, "unit_conversion": unit_conversion, "capital": capital,
    "letter_count": letter_count, "sort": sort, "reverse": reverse, "compare": compare, "explain": explain,
}


# ---------------------------------------------------------------- an explicit instruction on the form
# style -> (instructions, how the reference answer is rewritten to keep it); checked by gatt.check_constraint
_FORM_INSTRUCTIONS = {
    "all_caps": (("Answer in all capital letters.", "Please write your answer in uppercase only.",
                  "Reply using only capital letters."), str.upper),
    "all_lowercase": (("Answer in lowercase letters only.", "Write your whole answer in lowercase.",
                       "Please reply without any capital letters."), str.lower),
    "start_indeed": (("Begin your answer with the word 'Indeed'.", "Start your reply with 'Indeed'.",
                      "Your answer must start with the word Indeed."), lambda text: "Indeed. " + text),
}


def constrained(rng: random.Random, split: str) -> Item:
    """Another task's question with an instruction on the form of the answer, as people add them ("...
    Answer in lowercase."): the answer must be right and keep the form (IFEval-style instruction following)."""
    task = rng.choice(sorted(t for t in TASKS if t != "constrained"))
    item = TASKS[task](rng, split)
    from .gatt import check_constraint

    styles = sorted(_FORM_INSTRUCTIONS)
    rng.shuffle(styles)
    for style in styles:  # a form the rewritten answers keep ("126." has no letters to put in lowercase)
        phrasings, rewrite = _FORM_INSTRUCTIONS[style]
        check = {"type": "style", "value": style}
        variants = {name: [rewrite(a) for a in answers] for name, answers in item.variants.items()}
        if all(check_constraint(check, a) for a in variants["reference"]):
            break
    else:
        return item
    instruction = rng.choice(phrasings)
    prompt = f"{item.prompt} {instruction}" if rng.random() < 0.7 else f"{instruction} {item.prompt}"
    ignored = [a for a in item.variants["reference"] if not check_constraint(check, a)]  # right content, form ignored
    if ignored:
        variants["ignores_instruction"] = ignored
    return Item(prompt=prompt, meta={**item.meta, "style": style}, variants=variants)


TASKS["constrained"] = constrained
