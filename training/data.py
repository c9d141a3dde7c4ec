"""Training examples from the project's annotations or a researcher's own data.

Labels are validated up front: a bad row stops the run with a message naming
the file, the row and the bad value, before any compute is spent.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from data.lines import BadLine, CsvTable
from data.loader import load_annotations
from data.schema import ANGER_LABELS, COMPLAINT_TYPES
from data.script import detect_script
from data.sources import hash_split
from data.splits import text_key
from model.context import with_context
from training.config import DataConfig, DataSource

logger = logging.getLogger(__name__)

FIELDS = ("id", "text", "anger_level", "complaint_type", "types", "threat", "script", "split", "region")


class DataError(ValueError):
    """Training data is invalid; the message names the source, row and value."""


@dataclass
class Example:
    text: str
    anger_level: int | None
    complaint_type: str | None
    types: list[str]
    threat: bool | None
    script: str
    split: str
    source: str = ""
    id: str = ""
    weak: bool = False
    weight: float = 1.0
    meta: dict[str, Any] = field(default_factory=dict)
    #: weak anger signal (k, y): "anger_level > k" is y; used where only that is known (data.weak)
    anger_bound: tuple[int, int] | None = None
    #: the turns before this one in a conversation, [(role, text)] (``model.context``)
    context: list[tuple[str, str]] | None = None

    def as_gold(self) -> dict[str, Any]:
        return {
            "anger_level": self.anger_level,
            "complaint_type": self.complaint_type,
            "threat": self.threat,
            "script": self.script,
        }


def model_input(ex: Example, *, use_context: bool = True) -> str:
    """What the model reads for an example: the text, with its conversation context if any."""
    return with_context(ex.text, ex.context) if use_context else ex.text


def _parse_level(value: Any, where: str) -> int:
    if isinstance(value, bool):
        raise DataError(f"{where}: anger_level must be 0-3 or a label, got {value!r}")
    if isinstance(value, int | float) and float(value).is_integer() and 0 <= int(value) <= 3:
        return int(value)
    if isinstance(value, str):
        v = value.strip().lower()
        if v.isdigit() and 0 <= int(v) <= 3:
            return int(v)
        if v in ANGER_LABELS:
            return ANGER_LABELS.index(v)
    raise DataError(f"{where}: anger_level must be 0-3 or one of {list(ANGER_LABELS)}, got {value!r}")


def _parse_type(value: Any, where: str) -> str:
    if isinstance(value, str) and value.strip() in COMPLAINT_TYPES:
        return value.strip()
    raise DataError(f"{where}: complaint_type must be one of {list(COMPLAINT_TYPES)}, got {value!r}")


def _parse_bool(value: Any, where: str, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.strip().lower() in {"true", "1", "yes"}
    raise DataError(f"{where}: {name} must be true/false, got {value!r}")


def _parse_types(value: Any, primary: str, where: str) -> list[str]:
    if value is None or value == "":
        return [primary]
    if isinstance(value, str):
        try:
            value = (
                json.loads(value)
                if value.strip().startswith("[")
                else [v for v in value.replace(",", "|").split("|") if v]
            )
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: types is not a valid JSON list ({e.msg}): {value!r}") from e
    if not isinstance(value, list):
        raise DataError(f"{where}: types must be a list of complaint types, got {value!r}")
    out = [primary]
    for v in value:
        t = _parse_type(v, where)
        if t not in out:
            out.append(t)
    return out


def _parse_context(value: Any, where: str) -> list[tuple[str, str]] | None:
    """The turns before a conversation turn: ``[[role, text], ...]`` or ``[{"role", "text"}, ...]`` (a JSON string
    of either in a CSV cell); anything else is an error naming the row (a list of objects was read as key pairs)."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: context is not valid JSON ({e.msg})") from e
    turns: list[tuple[str, str]] = []
    for turn in value if isinstance(value, list) else [None]:
        if isinstance(turn, dict) and set(turn) >= {"role", "text"}:
            turns.append((str(turn["role"]), str(turn["text"])))
        elif isinstance(turn, list | tuple) and len(turn) == 2:
            turns.append((str(turn[0]), str(turn[1])))
        else:
            raise DataError(
                f'{where}: context must be a list of [role, text] pairs or {{"role", "text"}} objects, got {turn!r}'
            )
    return turns or None


def row_to_example(row: dict[str, Any], src: DataSource, where: str) -> Example:
    cols = {f: src.columns.get(f, f) for f in FIELDS}

    def get(f: str) -> Any:
        return row.get(cols[f])

    text = get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f"{where}: column {cols['text']!r} missing or empty")
    level = _parse_level(get("anger_level"), where) if "anger_level" in src.tasks else None
    ctype = _parse_type(get("complaint_type"), where) if "complaint_type" in src.tasks else None
    types = _parse_types(get("types"), ctype, where) if ctype is not None else []
    threat = _parse_bool(get("threat"), where, "threat") if "threat" in src.tasks else None
    region = get("region") or None
    if region is not None and region not in {"tw", "hk", "cn"}:
        raise DataError(f"{where}: region must be tw, hk or cn, got {region!r}")
    script = get("script") or detect_script(text)
    if script not in {"hant", "hans"}:
        raise DataError(f"{where}: script must be hant or hans, got {script!r}")
    if src.split == "column":
        split = get("split")
        if split not in {"train", "dev", "test"}:
            raise DataError(f"{where}: split must be train, dev or test, got {split!r}")
    elif src.split == "auto":
        # a row without its own split gets one from its text alone: the same text lands in the same split however
        # the file is named, moved or spelt on the command line, and a duplicate never straddles train and test
        split = get("split") if get("split") in {"train", "dev", "test"} else hash_split(f"text:{text_key(text)}")
    else:
        split = src.split
    return Example(
        text=text,
        anger_level=level,
        complaint_type=ctype,
        types=types,
        threat=threat,
        script=script,
        split=split,
        source=str(row.get("source") or src.path),
        id=str(get("id") if get("id") is not None else ""),
        weak=src.weak,
        weight=src.weight,
        context=_parse_context(row.get("context"), where),
        meta={"region": region} if region else {},
    )


def _read_rows(src: DataSource) -> tuple[list[dict[str, Any]], list[int] | None]:
    """The rows of a file or ``datasets`` source, and each row's line in its file (None for a dataset)."""
    path = src.path
    fmt = src.format
    if fmt == "hf" or path.startswith("hf:"):
        return _read_hf(path.removeprefix("hf:")), None
    p = Path(path)
    if fmt == "auto":
        fmt = "csv" if p.suffix.lower() == ".csv" else "jsonl"
    if not p.exists():
        raise DataError(f"{path}: no such file")
    try:
        return _read_file_rows(p, fmt)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from e


def _read_file_rows(p: Path, fmt: str) -> tuple[list[dict[str, Any]], list[int]]:
    path = str(p)
    rows: list[dict[str, Any]] = []
    lines: list[int] = []
    with open(p, encoding="utf-8-sig", newline="") as f:
        if fmt == "csv":
            for item in CsvTable(f).rows():  # a broken quote is an error naming its line, not rows lost
                if isinstance(item, BadLine):
                    raise DataError(f"{path}:{item.line}: {item.reason}")
                n, row = item
                if None in row:
                    raise DataError(f"{path}:{n}: more fields than the header")
                rows.append(row)
                lines.append(n)
        else:
            for n, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e
                    if not isinstance(row, dict):
                        raise DataError(f"{path}:{n}: expected a JSON object, got {type(row).__name__}")
                    rows.append(row)
                    lines.append(n)
    return rows, lines


def _read_hf(name: str) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(name) if Path(name).exists() else datasets.load_dataset(name)
    except (FileNotFoundError, ValueError, ConnectionError) as e:
        raise DataError(
            f"hf:{name}: cannot load this dataset (a folder saved with save_to_disk, or a hub name): {e}"
        ) from e
    if isinstance(ds, datasets.DatasetDict):
        rows = []
        for split, part in ds.items():
            for r in part:
                r = dict(r)
                r.setdefault("split", {"validation": "dev"}.get(split, split))
                rows.append(r)
        return rows
    return [dict(r) for r in ds]


def load_weak(src: DataSource, *, shared_dir: str | None = None) -> list[Example]:
    """``weak:<name>`` sources (``data.weak``): real texts whose only label is an anger bound."""
    from data.weak import weak_rows

    rows = weak_rows(
        src.path.removeprefix("weak:"), shared_dir=Path(shared_dir) if shared_dir else None, limit=src.limit
    )
    return [
        Example(
            text=r.text,
            anger_level=None,
            complaint_type=None,
            types=[],
            threat=None,
            script=detect_script(r.text),
            split="train",
            source=r.source,
            id=r.id,
            weak=True,
            weight=src.weight,
            anger_bound=(r.k, r.y),
        )
        for r in rows
    ]


def load_source(src: DataSource, *, shared_dir: str | None = None) -> list[Example]:
    if src.path.startswith("weak:"):
        return load_weak(src, shared_dir=shared_dir)
    if src.path == "annotations":
        records = load_annotations(shared_dir=Path(shared_dir) if shared_dir else None, on_missing="skip")
        rows: list[dict[str, Any]] = records
        name = "annotations"
        lines: list[int] | None = None
    elif isinstance(src.path, str):
        rows, lines = _read_rows(src)
        name = src.path
    out = []
    for i, row in enumerate(rows[: src.limit] if src.limit else rows):
        # a file's errors name its line (as its parse errors do) and the data row; a dataset's, the row
        at = f"{name}:{lines[i]} (row {i + 1})" if lines is not None else f"{name} row {i + 1}"
        where = at + (f" (id {row.get('id')})" if row.get("id") is not None else "")
        out.append(row_to_example(row, src, where))
    return out


def load_examples(cfg: DataConfig) -> list[Example]:
    examples: list[Example] = []
    for src in cfg.sources:
        part = load_source(src, shared_dir=cfg.shared_dir)
        logger.info("loaded %d examples from %s%s", len(part), src.path, " (weak)" if src.weak else "")
        examples.extend(part)
    if not examples:
        raise DataError("no training examples were loaded")
    return examples
