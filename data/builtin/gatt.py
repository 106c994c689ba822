"""Ghost Attention constraints (hobby, language, public figure, answer style), each with a full
and a terse instruction ("Always answer as if you were Napoleon." / "Figure: Napoleon."), and a
programmatic check for the constraints that can be checked (language, style)."""
from __future__ import annotations

import random
import re
from typing import Any

from .splits import check_split, split_pool

HOBBIES = ("tennis", "gardening", "chess", "baking", "hiking", "painting", "photography", "cycling", "knitting",
           "birdwatching", "astronomy", "surfing", "fishing", "playing the guitar", "cooking", "rock climbing")
LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese", "Dutch")
FIGURES = ("Napoleon", "William Shakespeare", "Marie Curie", "Albert Einstein", "Cleopatra", "Leonardo da Vinci",
           "Abraham Lincoln", "Ada Lovelace", "Isaac Newton", "Jane Austen", "Wolfgang Amadeus Mozart",
           "Galileo Galilei", "Queen Victoria", "Julius Caesar", "Charles Darwin", "Nikola Tesla")
# style value -> (instruction, terse form)
STYLES = {
    "one_sentence": ("Always answer in one sentence.", "Style: one sentence."),
    "all_caps": ("Always answer in all capital letters.", "Style: all caps."),
    "all_lowercase": ("Always answer in lowercase letters only.", "Style: lowercase."),
    "short": ("Always answer in 12 words or fewer.", "Style: at most 12 words."),
    "haiku": ("Always answer with a haiku of three lines.", "Style: haiku."),
    "start_indeed": ("Always begin your answer with the word 'Indeed'.", "Style: start with 'Indeed'."),
}
_PHRASINGS = {
    "hobby": (("You enjoy {v}.", "Always answer as someone who loves {v}."), "Hobby: {v}."),
    "language": (("Always answer in {v}.", "Speak in {v} from now on."), "Language: {v}."),
    "figure": (("Always answer as if you were {v}.", "Act as {v}."), "Figure: {v}."),
}

# Common function words per language; a text is "in" a language when those dominate.
FUNCTION_WORDS = {
    "English": set("the is are and of to in it you that this with for was have be not your what".split()),
    "French": set("le la les est et des du de une je vous nous pas que qui pour dans avec ce sont suis au aux il elle "
                  "très mais bonjour oui".split()),
    "Spanish": set("el los las es y del una yo usted que por para con muy pero son está soy hola sí también como "
                   "un de la".split()),
    "German": set("der die das ist und nicht ich ein eine zu mit auf sie wir sehr aber sind bin für auch hallo ja "
                  "es den dem".split()),
    "Italian": set("il lo gli è e di che non un una per con sono molto ma io ciao anche della questo sei".split()),
    "Portuguese": set("o os as é e de que não um uma para com muito mas eu você são olá também isso da do".split()),
    "Dutch": set("de het een en is niet ik van met zijn ook maar dat voor hallo wij jij heel".split()),
}


def make_constraint(kind: str, value: str, rng: random.Random) -> dict[str, str]:
    """One constraint {"type", "value", "instruction", "terse"}: a style's fixed phrasing, or one of its
    family's phrasings drawn by ``rng`` (any value: recipes replace the lists)."""
    if kind == "style":
        if value not in STYLES:
            raise ValueError(f"make_constraint: unknown style {value!r}; expected one of {sorted(STYLES)}")
        instruction, terse = STYLES[value]
    elif kind in _PHRASINGS:
        full, terse_t = _PHRASINGS[kind]
        instruction, terse = rng.choice(full).format(v=value), terse_t.format(v=value)
    else:
        raise ValueError(f"make_constraint: unknown constraint type {kind!r}; expected hobby, language, figure "
                         "or style")
    return {"type": kind, "value": value, "instruction": instruction, "terse": terse}


def gatt_constraints(seed: int = 0, split: str | None = None) -> dict[str, list[dict[str, str]]]:
    """Constraints by type: {"hobby"|"language"|"figure"|"style": [{"type", "value", "instruction",
    "terse"}, ...]}, shuffled and phrased by ``seed``. With ``split``, only that split's share of
    each list (held-out constraints test whether GAtt generalizes to unseen instructions)."""
    rng = random.Random(f"gatt:{seed}")
    values = {"hobby": list(HOBBIES), "language": list(LANGUAGES), "figure": list(FIGURES), "style": list(STYLES)}
    out: dict[str, list[dict[str, str]]] = {}
    for kind, pool in values.items():
        if split is not None:
            pool = split_pool(pool, lambda v, k=kind: f"gatt:{k}:{v}", check_split(split))
        entries = [make_constraint(kind, v, rng) for v in pool]
        rng.shuffle(entries)
        out[kind] = entries
    return out


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def language_of(text: str) -> str | None:
    """The language whose function words are most frequent in ``text`` (ties: None)."""
    words = _words(text)
    hits = {lang: sum(w in fw for w in words) for lang, fw in FUNCTION_WORDS.items()}
    best = max(hits.values())
    winners = [lang for lang, h in hits.items() if h == best]
    return winners[0] if best >= 2 and len(winners) == 1 else None


def check_constraint(constraint: dict[str, Any], answer: str) -> bool | None:
    """Whether ``answer`` keeps a constraint; None where no program can tell (hobby, figure)."""
    kind, value = constraint["type"], constraint["value"]
    if kind == "language":
        words = _words(answer)
        hits = {lang: sum(w in fw for w in words) for lang, fw in FUNCTION_WORDS.items()}
        # related languages share words (de, que, e): the target must be among the leaders and beat English
        return hits[value] >= 2 and hits[value] == max(hits.values()) and hits[value] > hits["English"]
    if kind == "style":
        text = answer.strip()
        letters = [c for c in text if c.isalpha()]
        if value == "one_sentence":
            return bool(text) and "\n" not in text and len([s for s in re.split(r"(?<=[.!?])\s+", text) if s]) == 1
        if value == "all_caps":
            return bool(letters) and sum(c.isupper() for c in letters) >= 0.95 * len(letters)
        if value == "all_lowercase":
            return bool(letters) and sum(c.islower() for c in letters) >= 0.95 * len(letters)
        if value == "short":
            return 0 < len(text.split()) <= 12
        if value == "haiku":
            return len([line for line in text.splitlines() if line.strip()]) == 3
        if value == "start_indeed":
            return text.lower().startswith("indeed")
        raise ValueError(f"check_constraint: unknown style {value!r}; expected one of {sorted(STYLES)}")
    if kind in ("hobby", "figure"):
        return None
    raise ValueError(f"check_constraint: unknown constraint type {kind!r}; expected hobby, language, figure or style")
