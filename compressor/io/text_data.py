"""Raw text data as it usually comes: `.txt` (one text per line), `.jsonl` (one JSON object per line) or `.csv`
(a header row), each with a text and, in `.jsonl`/`.csv`, an optional label.

The text is the `text` field (else the first field holding a string); the label is the `label` field: integers, or
class names that the model's config maps to ids (`label2id`, applied by the tokenizing side, which knows the
config). Blank lines of a `.txt` are skipped (a file ending in a newline has no empty last text). Turning the texts
into the model's inputs is the model's tokenizer's job (`compressor.io.hf.load.TextEncoder`), not this module's.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from compressor.errors import DataError

TEXT_SUFFIXES = (".txt", ".jsonl", ".csv")
TEXT_KEY, LABEL_FIELD = "text", "label"
MAX_TEXT_BYTES = 1 << 30  # a text file is read whole: a GiB of text is far beyond any evaluation set


def is_text_file(path: Path) -> bool:
    return path.suffix.lower() in TEXT_SUFFIXES


def read_texts(path: Path) -> tuple[list[str], list[int | str] | None]:
    """The texts of a file and its labels (None when it has no label field)."""
    if path.stat().st_size > MAX_TEXT_BYTES:
        raise DataError(f"{path}: {path.stat().st_size:,} bytes, larger than a text file can be ({MAX_TEXT_BYTES:,})")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    suffix = path.suffix.lower()
    if suffix == ".txt":
        texts, labels = [line.strip() for line in raw.splitlines() if line.strip()], None
    else:
        rows = _jsonl_rows(raw, path) if suffix == ".jsonl" else _csv_rows(raw, path)
        texts, labels = _columns(rows, path)
    if not texts:
        raise DataError(f"{path}: no texts")
    return texts, labels


def _jsonl_rows(raw: str, path: Path) -> list[tuple[int, dict]]:
    lines = [(number, line) for number, line in enumerate(raw.splitlines(), 1) if line.strip()]
    return [(number, _json_object(line, f"{path} line {number}")) for number, line in lines]


def _json_object(line: str, where: str) -> dict:
    try:
        row = json.loads(line)
    except ValueError as exc:
        raise DataError(f"{where}: not JSON ({str(exc).splitlines()[0][:80]})") from None
    if isinstance(row, dict):
        return row
    raise DataError(f"{where}: expected a JSON object, e.g. {{\"text\": ..., \"label\": ...}}")


def _csv_rows(raw: str, path: Path) -> list[tuple[int, dict]]:
    try:
        reader = csv.DictReader(io.StringIO(raw, newline=""))
        rows = [(reader.line_num, dict(row)) for row in reader]
    except csv.Error as exc:
        raise DataError(f"{path}: not valid CSV ({exc})") from None
    if reader.fieldnames is None:
        raise DataError(f"{path}: empty CSV; expected a header row with a `text` column")
    if any(None in row for _, row in rows):  # csv puts the cells beyond the header under the key None
        number = next(n for n, row in rows if None in row)
        raise DataError(f"{path} line {number}: more cells than the header has columns")
    return rows


def _columns(rows: list[tuple[int, dict]], path: Path) -> tuple[list[str], list[int | str] | None]:
    """The text column (`text`, else the first holding a string in the first row) and the `label` column."""
    if not rows:
        raise DataError(f"{path}: no rows")
    first = rows[0][1]
    key = TEXT_KEY if TEXT_KEY in first else next(
        (k for k, v in first.items() if k != LABEL_FIELD and isinstance(v, str) and not _is_int(v)), None)
    if key is None:
        raise DataError(f"{path}: no text field: name it `text` (fields: {', '.join(map(str, first))})")
    has_labels = LABEL_FIELD in first
    texts, labels = [], []
    for number, row in rows:
        text = row.get(key)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{path} line {number}: `{key}` is missing or not a non-empty string")
        texts.append(text)
        if has_labels:
            labels.append(_label(row.get(LABEL_FIELD), path, number))
    return texts, (labels if has_labels else None)


def _is_int(value: str) -> bool:
    return value.strip().lstrip("-").isdigit()


def _label(value: object, path: Path, number: int) -> int | str:
    """An integer label (also written as text, as a CSV cell is) or a class name for the config's label2id."""
    if isinstance(value, bool) or value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{path} line {number}: `label` is missing (every row needs one when the column is there)")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        return int(value) if _is_int(value) else value.strip()
    raise DataError(f"{path} line {number}: `label` {value!r} is neither an integer nor a class name")
