"""Deterministic, seed-independent assignment of items to the train / heldout / test splits.

An *item* is the thing a prompt asks about (a country, an operand pair, a harmful act), not the
prompt text: every phrasing of one item lands in the same split, so a held-out prompt is never a
reworded training prompt, and held-out capitals are countries the model never saw in training.
"""
from __future__ import annotations

import hashlib
from functools import lru_cache
from typing import Callable, Sequence, TypeVar

SPLITS = ("train", "heldout", "test")
# Share of every item pool per split. Finite pools are cut by rank, so each split gets at least
# one item of every pool (pools have three or more items).
FRACTIONS = {"train": 0.6, "heldout": 0.2, "test": 0.2}

T = TypeVar("T")


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {SPLITS}")
    return split


@lru_cache(maxsize=65536)
def stable_hash(text: str) -> int:
    """A 64-bit hash that is the same on every machine and Python run (unlike ``hash()``)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def split_of_key(key: str) -> str:
    """Split of one item of an open-ended pool (e.g. operand pairs), by hash bucket."""
    bucket = (stable_hash("split:" + key) % 10_000) / 10_000
    edge = 0.0
    for split in SPLITS:
        edge += FRACTIONS[split]
        if bucket < edge:
            return split
    return SPLITS[-1]


def split_pool(pool: Sequence[T], key: Callable[[T], str], split: str) -> list[T]:
    """The items of a finite pool that belong to ``split``: items ranked by hash, cut by FRACTIONS.

    Adding an item to a pool may move a few others across splits; the tables are fixed in code,
    so the assignment is stable for a given version of the package.
    """
    check_split(split)
    ranked = sorted(pool, key=lambda item: stable_hash("split:" + key(item)))
    n = len(ranked)
    if n < 3:
        raise ValueError(f"split_pool: a pool needs at least 3 items to give every split one, got {n}")
    n_heldout = max(1, round(n * FRACTIONS["heldout"]))
    n_train = n - n_heldout - max(1, round(n * FRACTIONS["test"]))
    bounds = {"train": (0, n_train), "heldout": (n_train, n_train + n_heldout), "test": (n_train + n_heldout, n)}
    lo, hi = bounds[split]
    return ranked[lo:hi]
