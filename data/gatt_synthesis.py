"""Ghost Attention data (Llama 2 §3.3): instructions made of constraints, dialogues to synthesize over, the
programs that make a sampled answer keep a checkable constraint, and the training conversations.

An instruction combines constraints drawn at random from the paper's families (hobby, language, public
figure) and the checkable answer styles (data/builtin/gatt.py), and is made terse half of the time
("Figure: Napoleon. Style: all caps."). While answers are sampled it is added to every user turn; in the
training conversation it stays only in the first turn, as the system message, and only the last answer
carries loss (``train_on: last_assistant`` of the fine-tuning kit).
"""
from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from data import builtin
from data.builtin.gatt import FIGURES, HOBBIES, LANGUAGES, STYLES, check_constraint, make_constraint
from data.builtin.helpful import TASKS
from data.records import Conversation, DataError
from data.sources import DataSource, load_conversations

FAMILIES = ("hobby", "language", "figure")  # the paper's; "style" is the checkable one added here
DEFAULT_LISTS = {"hobby": HOBBIES, "language": LANGUAGES, "figure": FIGURES, "style": tuple(STYLES)}


# ---------------------------------------------------------------------------------------------
# Instructions
# ---------------------------------------------------------------------------------------------

@dataclass
class Instruction:
    """The constraints of one dialogue and the instruction text that states them (full or terse)."""

    constraints: list[dict[str, str]]
    terse: bool
    text: str = ""

    def __post_init__(self) -> None:
        if not self.text:
            self.text = " ".join(c["terse" if self.terse else "instruction"] for c in self.constraints)

    def to_dict(self) -> dict[str, Any]:
        return {"constraints": self.constraints, "terse": self.terse, "text": self.text}


def terse_form(constraints: Sequence[dict[str, str]]) -> str:
    """The terse instruction of constraints: "Figure: Napoleon. Style: all caps." (the paper's rewriting)."""
    return " ".join(c["terse"] for c in constraints)


def sample_instruction(rng: random.Random, lists: dict[str, Sequence[str]], families: Sequence[str],
                       max_constraints: int, style_share: float, terse_share: float) -> Instruction:
    """A random instruction: a checkable style with probability ``style_share``, plus constraints of distinct
    families from ``families`` (1 to ``max_constraints`` in all, at least one; a language only without a
    style), terse with ``terse_share``."""
    chosen: list[dict[str, str]] = []
    if "style" in lists and lists["style"] and rng.random() < style_share:
        chosen.append(make_constraint("style", rng.choice(list(lists["style"])), rng))
    # a language never comes with a style: a small policy rarely answers in the language, no program can make
    # an answer keep it, and a dialogue without a target ends there, taking the style's targets with it
    pool = [f for f in families if lists.get(f) and not (chosen and f == "language")]
    low = 0 if chosen else 1
    if not pool and not chosen:
        raise ValueError("sample_instruction: no constraint list to draw from; give a family list or styles")
    count = min(len(pool), rng.randint(low, max(low, max_constraints - len(chosen))))
    for family in rng.sample(pool, count):
        chosen.append(make_constraint(family, rng.choice(list(lists[family])), rng))
    rng.shuffle(chosen)
    return Instruction(chosen, terse=rng.random() < terse_share)


# ---------------------------------------------------------------------------------------------
# Dialogues to synthesize over
# ---------------------------------------------------------------------------------------------

def builtin_dialogues(split: str, n: int, seed: int, turns: int) -> list[list[str]]:
    """``n`` dialogues of ``turns`` user messages: built-in helpful questions (open questions, arithmetic,
    capitals, ...) asked one after another, as a user does in a long chat. No question repeats within
    the first ``n * turns`` prompts of the split while its pools last."""
    mix = {task: 1.0 for task in TASKS if task != "constrained"}  # those carry their own form instruction
    questions = [p.messages[-1]["content"] for p in builtin.prompts(split, n * turns, seed, mix=mix)]
    return [questions[i * turns:(i + 1) * turns] for i in range(n)]


def user_turns(conversation: Conversation) -> list[str]:
    """The user messages of any chat record, in order (its answers are re-sampled, so they are not kept)."""
    return [m["content"] for m in conversation.messages if m.get("role") == "user" and m["content"].strip()]


def load_dialogues(sources: list[DataSource], seed: int, key: str, turns: int,
                   min_turns: int = 2) -> list[list[str]]:
    """The user turns of each dialogue a recipe names: ``builtin`` gives built-in dialogues of ``turns``
    questions; a file or hub dataset gives any chat data, each record's first ``turns`` user messages
    (records with fewer than ``min_turns`` are left out: a one-turn record teaches nothing about turn 2)."""
    dialogues: list[list[str]] = []
    for i, src in enumerate(sources):
        if src.source == "builtin":
            dialogues += builtin_dialogues(src.split, src.n or 64, seed, turns)
            continue
        records = load_conversations([src], seed, f"{key}[{i}]")
        kept = [user_turns(r)[:turns] for r in records]
        kept = [d for d in kept if len(d) >= min_turns]
        if not kept:
            raise DataError(f"{key}[{i}]", None, None, f"'{src.source}' has no record with {min_turns} or more user "
                                                       "turns; GAtt needs multi-turn chat data")
        dialogues += kept
    return dialogues


def with_instruction(instruction: str, user: str) -> str:
    """A user turn as the answers are sampled: the instruction concatenated to it (§3.3)."""
    return f"{instruction}\n\n{user}"


def sampling_messages(instruction: str, users: Sequence[str], answers: Sequence[str]) -> list[dict[str, str]]:
    """The conversation a turn is sampled from: every user turn carries the instruction; ``answers`` are the
    targets chosen for the earlier turns (one fewer than ``users``)."""
    messages: list[dict[str, str]] = []
    for i, user in enumerate(users):
        messages.append({"role": "user", "content": with_instruction(instruction, user)})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def training_messages(instruction: str, users: Sequence[str], answers: Sequence[str]) -> list[dict[str, str]]:
    """The training conversation: the instruction once, as the system message, then the plain turns. Trained
    with ``train_on: last_assistant``, only the last answer carries loss."""
    if len(users) != len(answers) or not users:
        raise ValueError(f"training_messages: expected as many answers as user turns (>= 1), got {len(users)} "
                         f"user turns and {len(answers)} answers")
    messages = [{"role": "system", "content": instruction}]
    for user, reply in zip(users, answers):
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
    return messages


# ---------------------------------------------------------------------------------------------
# Compliant targets
# ---------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def first_sentences(text: str, count: int | None) -> str:
    """The first ``count`` sentences of an answer on one line (None: the whole answer, whitespace tidied).
    A sampled answer cut at the token limit loses its unfinished last sentence when it has a finished one."""
    text = " ".join(text.split())
    if count is None:
        return text
    sentences = [s for s in _SENTENCE_END.split(text) if s]
    if len(sentences) > 1 and not re.search(r"[.!?]$", sentences[-1]):
        sentences = sentences[:-1]
    return " ".join(sentences[:count])


def _haiku(text: str) -> str | None:
    words = first_sentences(text, 1).rstrip(".!?").split()[:15]
    if len(words) < 3:
        return None
    cut1, cut2 = round(len(words) * 5 / 17), round(len(words) * 12 / 17)
    cut1 = max(1, cut1)
    cut2 = max(cut1 + 1, min(cut2, len(words) - 1))
    return "\n".join(" ".join(part) for part in (words[:cut1], words[cut1:cut2], words[cut2:]))


def _short(text: str) -> str | None:
    words = first_sentences(text, 1).split()[:12]
    if not words:
        return None
    line = " ".join(words)
    return line if line[-1] in ".!?" else line.rstrip(",;:") + "."


def _indeed(text: str) -> str:
    if text.lower().startswith("indeed"):
        return text
    return "Indeed, " + (text[0].lower() + text[1:] if text[:1].isupper() and text[1:2].islower() else text)


ENFORCE = {  # style -> a program that makes an answer keep it (None: it cannot)
    "all_caps": str.upper,
    "all_lowercase": str.lower,
    "one_sentence": lambda text: first_sentences(text, 1) or None,
    "short": _short,
    "haiku": _haiku,
    "start_indeed": _indeed,
}


def enforce(constraints: Sequence[dict[str, str]], text: str) -> str | None:
    """``text`` rewritten by program so that it keeps every checkable style of ``constraints``; None when a
    checkable constraint cannot be kept by a program (a language) or the text is too short to rewrite.
    Constraints no program can check (hobby, figure) are left as they are."""
    # the opening word first, then the shape, the letter case last (it must also cover the added "Indeed")
    rank = {"start_indeed": 0, "all_caps": 2, "all_lowercase": 2}
    for constraint in sorted(constraints, key=lambda c: rank.get(c["value"], 1)):
        if constraint["type"] == "style":
            text = ENFORCE[constraint["value"]](text)
            if text is None:
                return None
        elif constraint["type"] == "language":
            if not check_constraint(constraint, text):
                return None
    for constraint in constraints:  # a later rewrite must not undo an earlier one ("Indeed" in all caps)
        if check_constraint(constraint, text) is False:
            return None
    return text


def keeps_all(constraints: Sequence[dict[str, str]], text: str) -> bool:
    """Whether every checkable constraint holds (constraints no program can check count as kept)."""
    return all(check_constraint(c, text) is not False for c in constraints)


@dataclass
class Target:
    """The answer chosen for one turn, and how: "kept" (a sample kept every checkable constraint; the best by
    reward among those), "enforced" (none did; the best sample rewritten by program), "unchecked" (no
    checkable constraint: the best sample), or None (no usable answer: the dialogue ends before this turn)."""

    text: str | None
    how: str | None
    sample: int | None = None
    rewards: list[float] = field(default_factory=list)


def choose_target(constraints: Sequence[dict[str, str]], samples: Sequence[str], rewards: Sequence[float],
                  usable: Sequence[bool], sentences: int | None, mode: str) -> Target:
    """Best-of-K filtered by the checkers and ranked by reward; with ``mode`` "best_of_k_then_enforce", when
    no sample keeps the checkable constraints, the best sample rewritten by ``enforce``. Every sample is first
    cut to its first ``sentences`` sentences (short targets keep the dialogue within the context)."""
    if mode not in ("best_of_k", "best_of_k_then_enforce"):
        raise ValueError(f"choose_target: mode must be best_of_k or best_of_k_then_enforce, got {mode!r}")
    trimmed = [first_sentences(s, sentences) for s in samples]
    order = sorted((i for i in range(len(trimmed)) if usable[i] and trimmed[i].strip()),
                   key=lambda i: (-rewards[i], i))
    checkable = any(check_constraint(c, "x") is not None for c in constraints)
    for i in order:
        if keeps_all(constraints, trimmed[i]):
            return Target(trimmed[i], "kept" if checkable else "unchecked", i, list(rewards))
    if mode == "best_of_k_then_enforce":
        for i in order:
            fixed = enforce(constraints, trimmed[i])
            if fixed is not None and fixed.strip():
                return Target(fixed, "enforced", i, list(rewards))
    return Target(None, None, None, list(rewards))


# ---------------------------------------------------------------------------------------------
# Evaluation probes
# ---------------------------------------------------------------------------------------------

PROBES = {"hobby": "What is your favourite hobby?", "figure": "Who are you?"}


def probe_question(constraint: dict[str, str]) -> str | None:
    """The question that asks whether a constraint no program can check on any answer is still held
    ("What is your favourite hobby?"); None for checkable ones, whose every answer is checked."""
    return PROBES.get(constraint["type"])


def _key_words(value: str) -> list[str]:
    small = {"the", "of", "da", "de", "playing", "queen", "king", "amadeus"}
    return [w for w in re.findall(r"[^\W\d_]+", value.lower()) if w not in small and len(w) > 2]


def answers_probe(constraint: dict[str, str], answer: str) -> bool:
    """Whether an answer to the probe names the hobby or the figure ("guitar" for "playing the guitar",
    "Curie" for "Marie Curie": any of the value's distinctive words)."""
    words = set(re.findall(r"[^\W\d_]+", answer.lower()))
    return any(w in words or w.rstrip("s") in words for w in _key_words(constraint["value"]))
