"""Turn a recipe's data-source entries into records: built-in data, local files or hub datasets.

A source with ``part: train`` or ``part: test`` is split by a seeded hash of each record's prompt
(:func:`split_part`): every record with the same prompt lands in the same part, the two parts are
disjoint and together give the whole source, and ``test_fraction`` of the prompts go to the test
part. The split is made on the whole source first; ``n`` then takes the first n records of the
part, in source order. So a recipe can train on ``{part: train, n: 240}`` and test on
``{part: test}`` of one file without any overlap, whatever the two ``n`` are.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Protocol, Sequence, TypeVar

from data import builtin, loaders
from data.records import Conversation, DataError, Preference, prompt_digest

log = logging.getLogger("chatalign.data")

Record = TypeVar("Record", Conversation, Preference)
# Built-in data is generated, not read: with a part, the pool grows until the part holds n records.
BUILTIN_DEFAULT_N = 1000
_BUILTIN_MAX_DOUBLINGS = 6


class DataSource(Protocol):
    """One input of a stage's data mixture, as a recipe gives it (the recipe schema documents each field)."""

    source: str               # "builtin", a local file, or "hub:<dataset id>"
    n: int | None             # records to take (builtin: to generate) after the split; None = all
    split: str                # builtin train/heldout/test, or the hub split
    format: str               # a row format of data/converters.py, or "auto"
    part: str                 # "all", or the "train"/"test" part of a seeded split by prompt
    test_fraction: float      # share of prompts in the test part
    is_safety: bool | None    # tag every record as a safety prompt (or not); None = as the data says
    kinds: list[str] | None   # builtin demonstrations only: the kinds of item to generate; None = the default mix


def _fail(key: str, message: str) -> DataError:
    """The error of a data source the recipe names: the recipe key, then what is wrong and what to do."""
    return DataError(key, None, None, message)


def _location(src: DataSource) -> tuple[str, str | None]:
    """(path or hub id, split): a local file has no splits, a hub dataset does."""
    if src.source.startswith("hub:"):
        return src.source[len("hub:"):], src.split
    return src.source, None


# ---------------------------------------------------------------------------------------------
# Train / test parts
# ---------------------------------------------------------------------------------------------

def prompt_messages(record: Conversation | Preference) -> list[dict[str, str]]:
    """What a record is split by: a pair's prompt, or a conversation up to its last user turn (so a
    conversation and the preference pairs asked on the same prompt fall on the same side)."""
    if isinstance(record, Preference):
        return list(record.prompt)
    messages = record.messages
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=len(messages) - 1)
    return list(messages[:last_user + 1])


def prompt_hash(record: Conversation | Preference, seed: int) -> float:
    """A number in [0, 1) that depends only on the seed and the record's prompt messages."""
    digest = prompt_digest(prompt_messages(record), salt=f"chatalign-part:{seed}:")
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_part(records: Sequence[Record], part: str, test_fraction: float, seed: int) -> list[Record]:
    """The records of one part, in their original order: "test" holds the prompts whose hash is below
    ``test_fraction``, "train" the rest, "all" everything."""
    if part == "all":
        return list(records)
    if part not in ("train", "test"):
        raise ValueError(f"part: expected 'all', 'train' or 'test', got {part!r}")
    want_test = part == "test"
    return [r for r in records if (prompt_hash(r, seed) < test_fraction) == want_test]


def _part_share(src: DataSource) -> float:
    return src.test_fraction if src.part == "test" else 1.0 - src.test_fraction


def _take_part(records: list[Record], src: DataSource, seed: int, key: str) -> list[Record]:
    """Split, then the first ``n`` of the part; an empty part is an error naming the recipe key."""
    kept = split_part(records, src.part, src.test_fraction, seed)
    if not kept and records:
        raise _fail(key, f"part '{src.part}' of '{src.source}' is empty (test_fraction "
                         f"{src.test_fraction} of {len(records)} records); choose a test_fraction that leaves "
                         f"prompts on both sides")
    log.info("%s: part '%s' of '%s': %d of %d records (test_fraction %s)%s", key, src.part, src.source,
             len(kept), len(records), src.test_fraction, f", first {src.n} taken" if src.n else "")
    return kept[:src.n] if src.n is not None else kept


def _builtin_part(generate: Callable[[int], list[Record]], src: DataSource, seed: int, key: str) -> list[Record]:
    """Built-in records of a part: generate a pool, split it, and grow the pool until the part has n."""
    if src.part == "all":
        return generate(src.n or BUILTIN_DEFAULT_N)
    share = _part_share(src)
    if share <= 0:
        raise _fail(key, f"part '{src.part}' with test_fraction {src.test_fraction} is always empty")
    if src.n is None:
        return _take_part(generate(BUILTIN_DEFAULT_N), src, seed, key)
    size = math.ceil(src.n / share * 1.1) + 8  # a little over the expected need, so one pool usually does
    for _ in range(_BUILTIN_MAX_DOUBLINGS):
        pool = generate(size)
        kept = split_part(pool, src.part, src.test_fraction, seed)
        if len(kept) >= src.n:
            return kept[:src.n]
        size *= 2
    raise _fail(key, f"the built-in data gives only {len(kept)} records in part '{src.part}' from a pool "
                     f"of {size // 2}; ask for fewer (n) or a larger share (test_fraction)")


# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------

def _load_file(loader: Callable[..., list[Record]], src: DataSource, seed: int, key: str) -> list[Record]:
    path, split = _location(src)
    # With a part, the whole source is read: cutting it to n first would split a different subset for
    # every n, so a train part and a test part of one file could share prompts.
    limit = src.n if src.part == "all" else None
    try:
        records = loader(path, split=split, format=src.format, limit=limit)
    except FileNotFoundError as err:
        raise _fail(f"{key}.source", f"no such file '{src.source}'") from err
    if not records:
        raise _fail(f"{key}.source", f"'{src.source}' gave no records (an empty file, or every row left out by the "
                                     f"rules of format '{src.format}', docs/DATA.md); expected at least one")
    records = records if src.part == "all" else _take_part(records, src, seed, key)
    if src.is_safety is not None:  # the recipe tags a whole file (e.g. adversarial prompts) for the safety gate
        for record in records:
            record.meta["is_safety"] = src.is_safety
    return records


def _check_kinds(kinds: list[str] | None, key: str) -> None:
    if kinds is not None and (not kinds or any(k not in builtin.KINDS for k in kinds)):
        raise _fail(key, f"expected some of {list(builtin.KINDS)}, got {list(kinds)}")


def load_conversations(sources: list[DataSource], seed: int, key: str) -> list[Conversation]:
    """Concatenate every source's conversations; ``key`` names the recipe field for errors."""
    records: list[Conversation] = []
    for i, src in enumerate(sources):
        kinds = getattr(src, "kinds", None)
        if src.source == "builtin":
            _check_kinds(kinds, f"{key}[{i}].kinds")
            records.extend(_builtin_part(lambda n, src=src, kinds=kinds: builtin.build(split=src.split, n=n, seed=seed,
                                                                                       kinds=kinds),
                                         src, seed, f"{key}[{i}]"))
        else:
            if kinds is not None:
                raise _fail(f"{key}[{i}].kinds", f"only the builtin source has kinds; '{src.source}' gives its own records")
            records.extend(_load_file(loaders.load_conversations, src, seed, f"{key}[{i}]"))
    return records


def load_preferences(sources: list[DataSource], seed: int, key: str, kind: str = "helpful", identical: str = "drop",
                     dropped: dict[str, int] | None = None) -> list[Preference]:
    """Concatenate every source's preference pairs (built-in pairs of ``kind``: helpful or safety).

    Pairs whose chosen equals rejected after whitespace normalisation hold no preference: with
    ``identical="drop"`` they are left out and counted in ``dropped`` under the source's recipe key,
    with ``"error"`` the first one stops the load.
    """
    records: list[Preference] = []
    for i, src in enumerate(sources):
        if src.source == "builtin":
            pairs = _builtin_part(
                lambda n, src=src: builtin.preference_pairs(kind=kind, split=src.split, n=n, seed=seed),
                src, seed, f"{key}[{i}]")
        else:
            pairs = _load_file(loaders.load_preferences, src, seed, f"{key}[{i}]")
        kept = drop_identical(pairs, f"{key}[{i}]", src.source, identical)
        if dropped is not None and len(kept) < len(pairs):
            dropped[f"{key}[{i}]"] = len(pairs) - len(kept)
        records.extend(kept)
    return records


def normalized_text(text: str) -> str:
    """Every run of whitespace as one space, none at the ends: answers equal after this say the same."""
    return " ".join(text.split())


def drop_identical(pairs: list[Preference], key: str, source: str, identical: str = "drop") -> list[Preference]:
    """The pairs whose chosen and rejected answers differ (after whitespace normalisation)."""
    kept = [p for p in pairs if normalized_text(p.chosen) != normalized_text(p.rejected)]
    if len(kept) == len(pairs):
        return kept
    if identical == "error":
        first = next(i for i, p in enumerate(pairs) if normalized_text(p.chosen) == normalized_text(p.rejected))
        raise _fail(key, f"pair {first + 1} of '{source}' (one of {len(pairs) - len(kept)}) has chosen == "
                         f"rejected after whitespace normalisation, so it holds no preference; fix the data, or set "
                         f"reward.identical_pairs: drop to leave such pairs out")
    log.warning("%s: dropped %d of %d pairs of '%s' whose chosen equals rejected (after whitespace normalisation)",
                key, len(pairs) - len(kept), len(pairs), source)
    return kept


def fingerprint(records: list[Any]) -> str:
    return loaders.fingerprint_records(records)
