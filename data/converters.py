"""Pure functions turning one raw data row (a dict) into a Conversation or a Preference.

Every converter takes ``(row, source, line)`` and raises DataError naming the source, the line and
the field when the row is malformed, so a loader can report exactly which row of which file is bad.
Columns a converter does not know are kept in ``meta`` (ids, sources, categories survive a round trip).
"""
from __future__ import annotations

import re
from typing import Any, Callable

from data.records import RATINGS, Conversation, DataError, Preference, validate_messages

Row = dict[str, Any]

# Keys each format consumes; the rest of a row goes to meta.
_CONVERSATION_KEYS = {"messages", "meta"}
_PROMPT_COMPLETION_KEYS = {"prompt", "completion", "meta"}
_PREFERENCE_KEYS = {"prompt", "chosen", "rejected", "rating", "margin", "chosen_safe", "rejected_safe", "meta"}

# HH-RLHF marks turns with "\n\nHuman:" / "\n\nAssistant:"; the first turn may lack the blank line.
_HH_MARKER = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def _meta(row: Row, consumed: set[str], source: str, line: int | None) -> dict[str, Any]:
    meta = row.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise DataError(source, line, "meta", f"expected an object, got {type(meta).__name__}")
    extra = {k: v for k, v in row.items() if k not in consumed and k not in meta}
    return {**meta, **extra}


def _require(row: Row, key: str, source: str, line: int | None) -> Any:
    if key not in row or row[key] is None:
        raise DataError(source, line, key, "missing; this row's format needs it")
    return row[key]


def _as_messages(value: Any, default_role: str, source: str, line: int | None, field_name: str,
                 last_role: str | None = None) -> list[dict[str, str]]:
    """A plain string is one message of ``default_role`` (TRL's standard, non-chat format)."""
    if isinstance(value, str):
        value = [{"role": default_role, "content": value}]
    return validate_messages(value, source, line, field_name, last_role=last_role)


def _as_reply(value: Any, prompt: list[dict[str, str]], source: str, line: int | None, field_name: str) -> str:
    """A chosen/rejected reply: a string, or a list holding one assistant message, after the prompt
    turns when the list repeats them (as some datasets, e.g. UltraFeedback, store it)."""
    if isinstance(value, str):
        return value
    messages = validate_messages(value, source, line, field_name, last_role="assistant")
    if len(messages) > len(prompt) and messages[:len(prompt)] == prompt:
        messages = messages[len(prompt):]
    if len(messages) != 1:
        raise DataError(source, line, field_name,
                        f"expected a string or exactly one assistant message, got {len(messages)} messages")
    return messages[0]["content"]


def parse_hh_text(text: Any, source: str = "<row>", line: int | None = None,
                  field_name: str = "text") -> list[dict[str, str]]:
    """Parse HH-RLHF text ("\\n\\nHuman: ...\\n\\nAssistant: ...") into a message list."""
    if not isinstance(text, str):
        raise DataError(source, line, field_name, f"expected HH-RLHF text (a string), got {type(text).__name__}")
    parts = _HH_MARKER.split(text)
    # re.split with one group gives [before, role, content, role, content, ...].
    if parts[0].strip():
        raise DataError(source, line, field_name,
                        f"expected the text to start with 'Human:' or 'Assistant:', found {parts[0][:40]!r}")
    if len(parts) < 3:
        raise DataError(source, line, field_name, "expected HH-RLHF turns marked '\\n\\nHuman:' / '\\n\\nAssistant:'")
    messages = [{"role": _HH_ROLES[role], "content": content.strip()}
                for role, content in zip(parts[1::2], parts[2::2])]
    if not any(m["role"] == "user" for m in messages) or not any(m["role"] == "assistant" for m in messages):
        raise DataError(source, line, field_name, "expected at least one Human turn and one Assistant turn")
    return messages


def messages_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL conversational ``{"messages": [...]}``, and our own Conversation.to_dict()."""
    messages = validate_messages(_require(row, "messages", source, line), source, line, "messages")
    return Conversation(messages=messages, meta=_meta(row, _CONVERSATION_KEYS, source, line))


def prompt_completion_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL prompt/completion; plain strings become one user and one assistant message."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt")
    completion = _as_messages(_require(row, "completion", source, line), "assistant", source, line,
                              "completion", last_role="assistant")
    return Conversation(messages=prompt + completion, meta=_meta(row, _PROMPT_COMPLETION_KEYS, source, line))


def prompt_to_conversation(row: Row, source: str = "<row>", line: int | None = None) -> Conversation:
    """TRL prompt-only rows (prompts for generation in stages 3-6): the result ends with a user turn."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt", last_role="user")
    return Conversation(messages=prompt, meta=_meta(row, _PROMPT_COMPLETION_KEYS, source, line))


def _optional_fields(row: Row, source: str, line: int | None) -> dict[str, Any]:
    rating = row.get("rating")
    if rating is not None and rating not in RATINGS:
        raise DataError(source, line, "rating", f"expected one of {RATINGS} or null, got {rating!r}")
    margin = row.get("margin")
    if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
        raise DataError(source, line, "margin", f"expected a number or null, got {margin!r}")
    for key in ("chosen_safe", "rejected_safe"):
        if row.get(key) is not None and not isinstance(row[key], bool):
            raise DataError(source, line, key, f"expected true, false or null, got {row[key]!r}")
    return {"rating": rating, "margin": None if margin is None else float(margin),
            "chosen_safe": row.get("chosen_safe"), "rejected_safe": row.get("rejected_safe")}


def prompt_chosen_rejected_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """TRL explicit-prompt preference rows, and our own Preference.to_dict()."""
    prompt = _as_messages(_require(row, "prompt", source, line), "user", source, line, "prompt", last_role="user")
    return Preference(prompt=prompt,
                      chosen=_as_reply(_require(row, "chosen", source, line), prompt, source, line, "chosen"),
                      rejected=_as_reply(_require(row, "rejected", source, line), prompt, source, line, "rejected"),
                      **_optional_fields(row, source, line), meta=_meta(row, _PREFERENCE_KEYS, source, line))


def _split_shared_prompt(chosen: list[dict[str, str]], rejected: list[dict[str, str]], row: Row,
                         source: str, line: int | None) -> Preference:
    """Shared turns are the prompt; the final assistant turns are the two replies."""
    for name, messages in (("chosen", chosen), ("rejected", rejected)):
        if messages[-1]["role"] != "assistant":
            raise DataError(source, line, name, "expected the conversation to end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(source, line, "rejected",
                        "expected chosen and rejected to share every turn but the final assistant turn")
    if len(chosen) < 2:
        raise DataError(source, line, "chosen", "expected at least one user turn before the final assistant turn")
    prompt = validate_messages(chosen[:-1], source, line, "chosen", last_role="user")
    return Preference(prompt=prompt, chosen=chosen[-1]["content"], rejected=rejected[-1]["content"],
                      **_optional_fields(row, source, line), meta=_meta(row, _PREFERENCE_KEYS, source, line))


def hh_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """Anthropic HH-RLHF ``{"chosen": text, "rejected": text}``."""
    chosen = parse_hh_text(_require(row, "chosen", source, line), source, line, "chosen")
    rejected = parse_hh_text(_require(row, "rejected", source, line), source, line, "rejected")
    return _split_shared_prompt(chosen, rejected, row, source, line)


def implicit_prompt_to_preference(row: Row, source: str = "<row>", line: int | None = None) -> Preference:
    """TRL implicit-prompt rows: chosen/rejected are whole message lists sharing their prefix."""
    chosen = validate_messages(_require(row, "chosen", source, line), source, line, "chosen")
    rejected = validate_messages(_require(row, "rejected", source, line), source, line, "rejected")
    return _split_shared_prompt(chosen, rejected, row, source, line)


CONVERSATION_FORMATS: dict[str, Callable[[Row, str, int | None], Conversation]] = {
    "messages": messages_to_conversation,
    "prompt_completion": prompt_completion_to_conversation,
    "prompt": prompt_to_conversation,
}
PREFERENCE_FORMATS: dict[str, Callable[[Row, str, int | None], Preference]] = {
    "prompt_chosen_rejected": prompt_chosen_rejected_to_preference,
    "hh": hh_to_preference,
    "implicit_prompt": implicit_prompt_to_preference,
}


def _candidates(row: Row) -> list[str]:
    """Formats whose keys the row has, most specific first."""
    keys = {k for k, v in row.items() if v is not None}
    found = []
    if "messages" in keys:
        found.append("messages")
    if {"prompt", "completion"} <= keys:
        found.append("prompt_completion")
    if {"prompt", "chosen", "rejected"} <= keys:
        found.append("prompt_chosen_rejected")
    elif {"chosen", "rejected"} <= keys:
        found.append("hh" if isinstance(row["chosen"], str) else "implicit_prompt")
    if not found and "prompt" in keys:
        found.append("prompt")  # prompts of preference data only with format="prompt": no silent reading
    return found


def detect_format(row: Any, source: str = "<row>", line: int | None = None, kind: str | None = None) -> str:
    """Name of the converter for a row, from its keys; ``kind`` ("conversation" or "preference") picks
    among formats of that kind first, for rows carrying both (e.g. messages and chosen/rejected)."""
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object per row, got {type(row).__name__}")
    found = _candidates(row)
    wanted = {"conversation": CONVERSATION_FORMATS, "preference": PREFERENCE_FORMATS}.get(kind or "", {})
    found = [name for name in found if name in wanted] + [name for name in found if name not in wanted]
    if not found:
        raise DataError(source, line, None,
                        "could not tell the format from the keys " + repr(sorted(row)) + "; expected 'messages', "
                        "'prompt'+'completion', 'prompt'+'chosen'+'rejected', 'chosen'+'rejected', or 'prompt'")
    return found[0]


def _pick(formats: dict[str, Callable], kind: str, fmt: str, row: Any, source: str,
          line: int | None) -> Callable:
    name = detect_format(row, source, line, kind) if fmt == "auto" else fmt
    if name not in formats:
        other = "preference" if kind == "conversation" else "conversation"
        hint = f" (a {other} format: use load_{other}s)" if fmt == "auto" else ""
        raise DataError(source, line, None, f"format '{name}'{hint} cannot give a {kind}; "
                                            f"expected one of {sorted(formats)} or 'auto'")
    if not isinstance(row, dict):
        raise DataError(source, line, None, f"expected a JSON object per row, got {type(row).__name__}")
    return formats[name]


def to_conversation(row: Any, format: str = "auto", source: str = "<row>", line: int | None = None) -> Conversation:
    """Convert one row with the named converter, or the one detect_format picks."""
    return _pick(CONVERSATION_FORMATS, "conversation", format, row, source, line)(row, source, line)


def to_preference(row: Any, format: str = "auto", source: str = "<row>", line: int | None = None) -> Preference:
    """Convert one row with the named converter, or the one detect_format picks."""
    return _pick(PREFERENCE_FORMATS, "preference", format, row, source, line)(row, source, line)
