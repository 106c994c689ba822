"""Turn a recipe's data-source entries into records: built-in data, local files or hub datasets."""
from __future__ import annotations

from typing import Any

from data.records import Conversation, Preference
from stages.recipe import DataSource, RecipeError


def _location(src: DataSource) -> tuple[str, str | None]:
    """(path or hub id, split): a local file has no splits, a hub dataset does."""
    if src.source.startswith("hub:"):
        return src.source[len("hub:"):], src.split
    return src.source, None


def load_conversations(sources: list[DataSource], seed: int, key: str) -> list[Conversation]:
    """Concatenate every source's conversations; ``key`` names the recipe field for errors."""
    from data import loaders

    records: list[Conversation] = []
    for i, src in enumerate(sources):
        if src.source == "builtin":
            from data import builtin

            records.extend(builtin.build(split=src.split, n=src.n or 1000, seed=seed))
        else:
            path, split = _location(src)
            try:
                records.extend(loaders.load_conversations(path, split=split, format=src.format, limit=src.n))
            except FileNotFoundError as err:
                raise RecipeError(f"{key}[{i}].source: no such file '{src.source}'") from err
    return records


def load_preferences(sources: list[DataSource], seed: int, key: str, kind: str = "helpful") -> list[Preference]:
    from data import loaders

    records: list[Preference] = []
    for i, src in enumerate(sources):
        if src.source == "builtin":
            from data import builtin

            records.extend(builtin.preference_pairs(kind=kind, split=src.split, n=src.n or 1000, seed=seed))
        else:
            path, split = _location(src)
            try:
                records.extend(loaders.load_preferences(path, split=split, format=src.format, limit=src.n))
            except FileNotFoundError as err:
                raise RecipeError(f"{key}[{i}].source: no such file '{src.source}'") from err
    return records


def fingerprint(records: list[Any]) -> str:
    from data.loaders import fingerprint_records

    return fingerprint_records(records)
