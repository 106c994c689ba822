"""Record types that flow between data sources, stages and the registry.

Messages are plain dicts ``{"role": "system"|"user"|"assistant", "content": str}`` so that they
go straight into a tokenizer's chat template.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

ROLES = ("system", "user", "assistant")
# The paper's four preference levels (Table 27), strongest first.
RATINGS = ("significantly_better", "better", "slightly_better", "negligibly_better")


class DataError(ValueError):
    """A malformed input row: names the source, the line (1-based) and the field."""

    def __init__(self, source: str, line: int | None, field_name: str | None, expected: str):
        where = str(source)
        if line is not None:
            where += f", line {line}"
        if field_name:
            where += f", field '{field_name}'"
        super().__init__(f"{where}: {expected}")
        self.source, self.line, self.field_name, self.expected = source, line, field_name, expected


@dataclass
class Conversation:
    """A chat: messages ending with an assistant turn (training) or a user turn (a prompt)."""

    messages: list[dict[str, str]]
    meta: dict[str, Any] = field(default_factory=dict)  # id, source, task, category, is_safety, oracle keys

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Conversation":
        return cls(messages=list(row["messages"]), meta=dict(row.get("meta") or {}))


@dataclass
class Preference:
    """A preference pair: ``prompt`` is the conversation so far (ending with a user turn)."""

    prompt: list[dict[str, str]]
    chosen: str
    rejected: str
    rating: str | None = None  # one of RATINGS, or None when the source has no rating
    margin: float | None = None  # explicit per-pair margin from the data, overrides the rating table
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, row: dict[str, Any]) -> "Preference":
        known = {k: row[k] for k in ("prompt", "chosen", "rejected", "rating", "margin",
                                     "chosen_safe", "rejected_safe", "meta") if k in row}
        known["meta"] = dict(known.get("meta") or {})
        return cls(**known)


def validate_messages(messages: Any, source: str, line: int | None, field_name: str = "messages",
                      last_role: str | None = None) -> list[dict[str, str]]:
    """Check a message list and return it; raise DataError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise DataError(source, line, field_name, "expected a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(source, line, f"{field_name}[{i}]", "expected an object with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise DataError(source, line, f"{field_name}[{i}].role", f"expected one of {ROLES}, got {m['role']!r}")
        if not isinstance(m["content"], str):
            raise DataError(source, line, f"{field_name}[{i}].content", "expected a string")
    if last_role and messages[-1]["role"] != last_role:
        raise DataError(source, line, field_name, f"expected the last message to be from '{last_role}'")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def json_default(value: Any) -> Any:
    """What JSON has no type for: paths as POSIX strings, dataclasses as dicts, sets sorted."""
    if isinstance(value, Path):
        return value.as_posix()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot record {type(value).__name__} {value!r} in a manifest: "
                    f"use JSON types (dict, list, str, number, bool, None)")


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values hash equally (data fingerprints, prompt keys,
    the registry's inputs fingerprints)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=json_default)


def prompt_digest(messages: Sequence[dict[str, str]], salt: str = "") -> bytes:
    """sha256 of a prompt's messages as canonical JSON, after ``salt``: what a prompt's train/test part,
    its key and its random streams are derived from."""
    return hashlib.sha256((salt + canonical_json(list(messages))).encode("utf-8")).digest()


def prompt_key(messages: Sequence[dict[str, str]]) -> int:
    """A 63-bit key of a prompt's messages: names its random streams and its place in a pool of answers."""
    return int.from_bytes(prompt_digest(messages)[:8], "big") >> 1
