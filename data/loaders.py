"""Load conversations and preference pairs from local files or the Hugging Face Hub; write and fingerprint them.

Every row is converted or the load fails with a DataError naming the file and the line (JSONL) or the
row (other formats, 1-based, header excluded): a bad row is never dropped. Only a well-formed row that
its format filters out by rule (a converter returns None, e.g. a PandaLM tie) is left out.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import logging
import os
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

from data.converters import to_conversation, to_preference
from data.records import Conversation, DataError, Preference, canonical_json

SUFFIXES = (".jsonl", ".jsonl.gz", ".json", ".parquet", ".csv")
# CSV cells are text; these columns hold JSON (message lists, meta) when they start with '[' or '{'.
_CSV_JSON_COLUMNS = {"messages", "prompt", "completion", "chosen", "rejected", "meta"}
_CSV_BOOL = {"true": True, "false": False, "1": True, "0": False}

Record = TypeVar("Record", Conversation, Preference)
# (row, source, line): line is set for JSONL; for other formats the source already says "row N".
Located = tuple[Any, str, int | None]
log = logging.getLogger("chatalign.data")


def _suffix(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), path.suffix.lower())


def _jsonl_rows(path: Path) -> Iterator[Located]:
    opener = gzip.open if _suffix(path) == ".jsonl.gz" else open
    line_no = 0
    try:
        with opener(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(str(path), line_no, None,
                                    f"expected UTF-8 text ({e.reason} at byte {e.start})") from e
                if not text.strip():
                    continue  # blank lines (a trailing newline) are not rows
                yield _parse_json(text, str(path), line_no), str(path), line_no
    except (OSError, EOFError, zlib.error) as e:  # a truncated or corrupt .gz, an unreadable file
        raise DataError(str(path), line_no + 1 if line_no else None, None, f"cannot read the file ({e})") from e


def _parse_json(text: str, source: str, line: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(source, line if line is not None else e.lineno, None,
                        f"invalid JSON: {e.msg} at column {e.colno}") from e
    except RecursionError as e:
        raise DataError(source, line, None, "invalid JSON: nested too deeply") from e


def _utf8_text(path: Path) -> str:
    """The whole file as text; bytes that are not UTF-8 are an error naming their line."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(str(path), line, None, f"expected UTF-8 text ({e.reason} at byte {e.start})") from e


def _json_rows(path: Path) -> Iterator[Located]:
    text = _utf8_text(path)
    if not text.lstrip().startswith("["):
        yield from _jsonl_rows(path)  # JSON Lines saved under a .json name
        return
    rows = _parse_json(text, str(path), None)
    if not isinstance(rows, list):
        raise DataError(str(path), None, None, "expected a JSON array of rows")
    for i, row in enumerate(rows):
        yield row, f"{path}, row {i + 1}", None


def _csv_cell(column: str, cell: str | None) -> Any:
    if cell is None or cell == "":
        return None
    if column in _CSV_JSON_COLUMNS and cell.lstrip()[:1] in ("[", "{"):
        try:
            return json.loads(cell)
        except json.JSONDecodeError:
            return cell  # plain text that happens to start with a bracket
    if column == "margin":
        try:
            return float(cell)
        except ValueError:
            return cell  # the converter reports the bad value with its row
    if column in ("chosen_safe", "rejected_safe"):
        return _CSV_BOOL.get(cell.strip().lower(), cell)
    return cell


def _csv_rows(path: Path) -> Iterator[Located]:
    reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""))
    i = 0
    try:
        for i, row in enumerate(reader, start=1):
            if None in row:  # DictReader files cells past the header under the key None
                raise DataError(f"{path}, row {i}", None, None,
                                f"{len(reader.fieldnames or []) + len(row[None])} cells, but the header names "
                                f"{len(reader.fieldnames or [])} columns")
            yield {k: _csv_cell(k, v) for k, v in row.items()}, f"{path}, row {i}", None
    except csv.Error as e:
        raise DataError(f"{path}, row {i + 1}", None, None, f"malformed CSV: {e}") from e


def _parquet_rows(path: Path) -> Iterator[Located]:
    import pyarrow.parquet as pq  # comes with datasets

    try:
        rows = pq.read_table(path).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's errors derive from these (ArrowInvalid, ArrowIOError)
        raise DataError(str(path), None, None, f"not a readable parquet file ({e})") from e
    for i, row in enumerate(rows):
        yield row, f"{path}, row {i + 1}", None


_READERS: dict[str, Callable[[Path], Iterator[Located]]] = {
    ".jsonl": _jsonl_rows, ".jsonl.gz": _jsonl_rows, ".json": _json_rows,
    ".parquet": _parquet_rows, ".csv": _csv_rows,
}


def _hub_rows(name: str, split: str | None, limit: int | None, hub_kwargs: dict[str, Any]) -> Iterator[Located]:
    """A Hub dataset (needs network or the local HF cache), or a directory written by save_to_disk."""
    import datasets

    split = split or "train"
    spec = split if limit is None else f"{split}[:{limit}]"
    try:
        if Path(name).expanduser().is_dir():
            dataset = datasets.load_from_disk(str(Path(name).expanduser()))
            dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        else:
            dataset = datasets.load_dataset(name, split=spec, **hub_kwargs)
    except Exception as e:  # the datasets library raises many types (network, missing split, auth)
        raise DataError(name, None, None,
                        f"could not load the dataset (split {split!r}): {type(e).__name__}: {e}. If this machine is "
                        "offline, download it where there is network (or save it with write_jsonl) and give the "
                        "local path") from e
    for i, row in enumerate(dataset):
        yield row, f"{name}[{split}], row {i + 1}", None


def iter_rows(path_or_hub: str | os.PathLike, split: str | None = None, limit: int | None = None,
              hub_kwargs: dict[str, Any] | None = None) -> Iterator[Located]:
    """Raw rows with where they came from: a local file (see SUFFIXES), a save_to_disk dir, or a Hub name."""
    path = Path(path_or_hub).expanduser()
    if path.is_file():
        reader = _READERS.get(_suffix(path))
        if reader is None:
            raise DataError(str(path), None, None, f"unsupported file type; expected one of {SUFFIXES}")
        if split is not None:
            raise DataError(str(path), None, None, f"a local file has no splits; got split={split!r}")
        return reader(path)
    text = str(path_or_hub)
    if not path.is_dir() and (_suffix(path) in SUFFIXES or text.startswith(("/", "./", "../", "~"))):
        raise DataError(text, None, None, "file not found; expected a local data file or a Hub dataset name")
    return _hub_rows(text, split, limit, hub_kwargs or {})


def _load(convert: Callable[..., Record], path_or_hub: str | os.PathLike, split: str | None, format: str,
          limit: int | None, hub_kwargs: dict[str, Any] | None) -> list[Record]:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit: expected a non-negative integer or None, got {limit!r}")
    records: list[Record] = []
    if limit == 0:
        return records
    filtered = 0
    for row, source, line in iter_rows(path_or_hub, split, limit, hub_kwargs):
        record = convert(row, format=format, source=source, line=line)
        if record is None:
            filtered += 1  # left out by the format's rule (see data/converters.py), not malformed
            continue
        records.append(record)
        if len(records) == limit:
            break  # stop reading: rows past the limit are neither parsed nor checked
    if filtered:
        log.info("%s: %d rows left out by the rules of format %r (docs/DATA.md), %d kept",
                 path_or_hub, filtered, format, len(records))
    return records


def load_conversations(path_or_hub: str | os.PathLike, split: str | None = None, format: str = "auto",
                       limit: int | None = None, hub_kwargs: dict[str, Any] | None = None) -> list[Conversation]:
    """Conversations (or prompts: message lists ending with a user turn) from a file or a Hub dataset."""
    return _load(to_conversation, path_or_hub, split, format, limit, hub_kwargs)


def load_preferences(path_or_hub: str | os.PathLike, split: str | None = None, format: str = "auto",
                     limit: int | None = None, hub_kwargs: dict[str, Any] | None = None) -> list[Preference]:
    """Preference pairs from a file or a Hub dataset."""
    return _load(to_preference, path_or_hub, split, format, limit, hub_kwargs)


def _as_dict(record: Any) -> dict[str, Any]:
    return record.to_dict() if hasattr(record, "to_dict") else dict(record)


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> int:
    """Write records or dicts as JSON Lines (gzip if the name ends in .gz), atomically; return the row count.

    Readers never see a half-written file: the rows go to a temporary sibling that replaces the target.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    count = 0
    try:
        with os.fdopen(fd, "wb") as raw:
            out = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.name.endswith(".gz") else raw
            for row in rows:
                out.write((json.dumps(_as_dict(row), ensure_ascii=False) + "\n").encode("utf-8"))
                count += 1
            if out is not raw:
                out.close()
            raw.flush()
            os.fsync(raw.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows written by write_jsonl (plain JSON Lines, the pipeline's own files; a blank line is skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def fingerprint_records(records: Iterable[Any]) -> str:
    """sha256 hex of the records' canonical JSON, in order (order changes training, so it changes the hash)."""
    digest = hashlib.sha256()
    for record in records:
        digest.update(canonical_json(_as_dict(record)).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()
