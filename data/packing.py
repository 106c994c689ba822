"""Packing tokenized examples into fixed-size sequences without cross-example attention, and batch collation.

A pack carries ``position_ids`` that restart at 0 at each example; with ``attention_mask=None`` and no
KV cache, transformers turns those restarts into a block-diagonal causal mask (masking_utils'
find_packed_sequence_indices), so an example attends only to itself.
"""
from __future__ import annotations

import bisect
import random
from typing import Any, Sequence

import torch

from data.templates import IGNORE_INDEX

Example = dict[str, Any]


def _check_example(index: int, example: Example, seq_len: int) -> int:
    input_ids, labels = example.get("input_ids"), example.get("labels")
    if input_ids is None or labels is None or len(input_ids) != len(labels):
        raise ValueError(f"example {index}: expected 'input_ids' and 'labels' of the same length")
    if not 1 <= len(input_ids) <= seq_len:
        raise ValueError(f"example {index}: {len(input_ids)} tokens, expected 1..seq_len={seq_len}; "
                         "encode with max_length=seq_len so long examples are truncated and reported there")
    return len(input_ids)


def _best_fit_decreasing(lengths: list[int], seq_len: int) -> list[list[int]]:
    """Bins of example indices: longest first, each into the fullest pack it fits (few, full packs)."""
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (free space, bin index), sorted
    for index in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        slot = bisect.bisect_left(free, (lengths[index], -1))
        if slot == len(free):
            bins.append([index])
            space, bin_index = seq_len - lengths[index], len(bins) - 1
        else:
            space, bin_index = free.pop(slot)
            bins[bin_index].append(index)
            space -= lengths[index]
        if space > 0:
            bisect.insort(free, (space, bin_index))
    return [sorted(b) for b in bins]  # data order inside a pack, for reproducible packs


def _concat(examples: Sequence[Example]) -> Example:
    input_ids: list[int] = []
    labels: list[int] = []
    position_ids: list[int] = []
    for example in examples:
        input_ids += list(example["input_ids"])
        # HF shifts labels: the first token of an example would be predicted from the previous example's
        # last token, so it is never a target (alone it is never one either: nothing precedes it).
        labels += [IGNORE_INDEX] + list(example["labels"][1:])
        position_ids += list(range(len(example["input_ids"])))
    pack = {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
    if all("units" in example for example in examples):  # the loss units of a pack are its examples'
        pack["units"] = sum(example["units"] for example in examples)
    return pack


def pack_examples(examples: Sequence[Example], seq_len: int, shuffle_seed: int | None = None) -> list[Example]:
    """Pack examples into sequences of at most ``seq_len`` tokens with best-fit decreasing.

    Each example goes whole into one pack (an example longer than seq_len is an error: truncate when
    encoding, where it is counted). Packs come longest-first, or shuffled with ``shuffle_seed``.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len: expected a positive integer, got {seq_len!r}")
    lengths = [_check_example(i, example, seq_len) for i, example in enumerate(examples)]
    packs = [_concat([examples[i] for i in members]) for members in _best_fit_decreasing(lengths, seq_len)]
    if shuffle_seed is not None:
        random.Random(shuffle_seed).shuffle(packs)
    return packs


def _pad(rows: list[list[int]], value: int, width: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)


def collate(batch: Sequence[Example], pad_token_id: int) -> dict[str, Any]:
    """Right-pad a batch into tensors: packs (with position_ids) or plain examples.

    Plain: input_ids, labels, attention_mask. Packed: input_ids, labels, position_ids and
    ``use_cache=False`` -- no attention_mask, and no cache, because either one makes transformers fall
    back to a plain causal mask over the whole pack and examples would attend to each other. The
    padding of a pack gets its own restarting positions, so it forms a separate, untrained segment.
    """
    if not batch:
        raise ValueError("collate: expected a non-empty batch")
    packed = ["position_ids" in example for example in batch]
    if any(packed) and not all(packed):
        raise ValueError("collate: expected all examples packed (with position_ids) or none")
    width = max(len(example["input_ids"]) for example in batch)
    input_ids = [list(example["input_ids"]) for example in batch]
    out: dict[str, Any] = {
        "input_ids": _pad(input_ids, pad_token_id, width),
        "labels": _pad([list(example["labels"]) for example in batch], IGNORE_INDEX, width),
    }
    if all(packed):
        out["position_ids"] = torch.tensor(
            [list(example["position_ids"]) + list(range(width - len(example["position_ids"]))) for example in batch],
            dtype=torch.long)
        out["use_cache"] = False
    else:
        out["attention_mask"] = _pad([[1] * len(ids) for ids in input_ids], 0, width)
    return out
