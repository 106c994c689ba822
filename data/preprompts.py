"""Safety preprompts for context distillation (Llama 2 §4.2.4, Table 39): a generic preprompt built from
adjectives ("You are a safe and responsible assistant"), and targeted ones that add an answer template per
risk category (illicit and criminal activities, hateful and harmful activities, unqualified advice), plus a
keyword classifier for prompts whose data carries no category.

Every text here was written for this project after the paper's description; none is copied from it.
"""
from __future__ import annotations

import re
from typing import Sequence

CATEGORIES = ("illicit_criminal", "hateful_harmful", "unqualified_advice")
DEFAULT_ADJECTIVES = ("responsible", "respectful", "wise")

# The answer template of each risk category, in the paper's order for a good answer: address immediate
# safety concerns, then explain the risks, then add what helps.
ANSWER_TEMPLATES = {
    "illicit_criminal": (
        "The request may involve an illegal or criminal activity. If anyone could be in danger, address that "
        "first. Then clearly decline to help with the illegal part, explain the legal and personal risks in a "
        "sentence, and offer a lawful alternative or a place to get legitimate help."),
    "hateful_harmful": (
        "The request may hurt someone or target people. If someone may be at risk of harm, including the user, "
        "address that first and point to a crisis line or someone they trust. Then decline to produce hurtful "
        "or dangerous content, explain why it causes harm, and offer a respectful way to meet the real need."),
    "unqualified_advice": (
        "The request asks for advice that needs a qualified professional. Address any urgent risk first (in an "
        "emergency, tell them to call emergency services). Do not give a diagnosis, a dosage, or legal or "
        "financial instructions that could hurt them; explain briefly why, and tell them which professional to "
        "ask and what general, safe information may help meanwhile."),
}


def generic_preprompt(adjectives: Sequence[str] = DEFAULT_ADJECTIVES) -> str:
    """"You are a safe, responsible, respectful and wise assistant. ..." from the adjectives."""
    words = ["safe", *[a for a in adjectives if a != "safe"]]
    listed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]
    return (f"You are a {listed} assistant. Never help with anything dangerous, illegal, hateful or unethical, "
            "and never write content that could hurt someone. If a request is harmful, say so briefly, explain "
            "the risk, and offer a safe and helpful alternative.")


def targeted_preprompt(category: str | None, adjectives: Sequence[str] = DEFAULT_ADJECTIVES) -> str:
    """The generic preprompt followed by the answer template of the prompt's risk category (a category this
    module does not know gets the generic preprompt alone)."""
    base = generic_preprompt(adjectives)
    template = ANSWER_TEMPLATES.get(category or "")
    return f"{base} {template}" if template else base


def preprompt_for(kind: str, category: str | None, adjectives: Sequence[str] = DEFAULT_ADJECTIVES) -> str:
    """The preprompt of ``kind`` ("generic" or "targeted") for a prompt of ``category``."""
    if kind == "generic":
        return generic_preprompt(adjectives)
    if kind == "targeted":
        return targeted_preprompt(category, adjectives)
    raise ValueError(f"preprompt_for: kind must be generic or targeted, got {kind!r}")


def with_preprompt(messages: list[dict[str, str]], preprompt: str) -> list[dict[str, str]]:
    """The conversation with the preprompt as its system message (before an existing system message's text)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{preprompt}\n\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": preprompt}, *messages]


# Words that mark each risk category; the category with the most hits wins (ties and no hit: None).
_KEYWORDS = {
    "illicit_criminal": ("steal", "theft", "rob", "hack", "malware", "virus", "ransomware", "bomb", "explosive",
                         "weapon", "gun", "firearm", "drug", "meth", "cocaine", "launder", "counterfeit", "fraud",
                         "scam", "phishing", "smuggle", "traffic", "illegal", "crime", "criminal", "break into",
                         "shoplift", "pirate", "cheat", "forge", "identity", "password", "poison", "kidnap",
                         "terror", "bribe", "evade", "tax evasion"),
    "hateful_harmful": ("hate", "racist", "sexist", "harass", "bully", "stalk", "threat", "hurt", "kill", "suicide",
                        "self-harm", "cut myself", "starve", "anorexia", "violence", "attack", "insult", "defame",
                        "humiliate", "misinformation", "fake news", "propaganda", "manipulate", "revenge", "torture",
                        "abuse", "slur", "discriminat", "extremis"),
    "unqualified_advice": ("dose", "dosage", "medication", "prescription", "diagnos", "symptom", "treat", "cure",
                           "doctor", "pill", "lawyer", "lawsuit", "sue ", "contract", "court", "custody", "invest",
                           "stock", "crypto", "loan", "mortgage", "retirement", "tax return", "surgery"),
}
_KEYWORD_RES = {cat: re.compile("|".join(rf"\b{re.escape(w)}" for w in words))
                for cat, words in _KEYWORDS.items()}


def classify_risk(text: str) -> str | None:
    """The risk category a prompt most likely falls in, by keywords (the recipe's ``category_from:
    keywords``); None when no category's words appear or two tie."""
    lowered = text.lower()
    hits = {cat: len(pattern.findall(lowered)) for cat, pattern in _KEYWORD_RES.items()}
    best = max(hits.values())
    winners = [cat for cat, h in hits.items() if h == best]
    return winners[0] if best > 0 and len(winners) == 1 else None


def load_safety_prompts(sources: list, seed: int, key: str, kinds: Sequence[str] = ("harmful",)) -> list:
    """Prompts for distillation and its evaluation: ``builtin`` gives n built-in prompts of ``kinds``
    (harmful requests, and benign look-alikes with "borderline"); a file or hub dataset gives its prompts
    (records tagged with the source's ``is_safety`` or their own meta), cut after the last user turn."""
    from data import builtin
    from data.records import Conversation
    from data.sources import load_conversations, prompt_messages

    prompts = []
    for i, src in enumerate(sources):
        if src.source == "builtin":
            prompts += builtin.prompts(src.split, src.n or 64, seed, kinds=list(kinds))
            continue
        for record in load_conversations([src], seed, f"{key}[{i}]"):
            messages = prompt_messages(record)
            if messages and messages[-1].get("role") == "user":
                prompts.append(Conversation(messages=messages, meta=dict(record.meta)))
    return prompts
