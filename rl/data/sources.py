"""Reading raw VQA tables: local files (.jsonl .json .csv .parquet), `save_to_disk` folders and hub datasets.

Everything here only turns a source into plain dict rows; `glimpserl.rl.data.loading` validates and normalises them.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

FILE_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")


@dataclass
class RawTable:
    """Rows of one source, not yet validated. `rows` supports len() and iteration in file order."""

    source: str  # how errors name the source: a file path, a folder or a hub id (with split)
    columns: list[str]
    rows: Sequence[dict[str, Any]]
    image_root: Path | None  # where relative image paths live; None when the source has no folder
    line_numbers: list[int] | None = None  # 1-based file line where each row starts (.jsonl and .csv)
    problems: dict[int, tuple[str, str]] = field(default_factory=dict)
    """Rows that could not be read at all: index -> (reason, message); their entry in `rows` is empty."""

    def where(self, index: int) -> str:
        line = f", line {self.line_numbers[index]}" if self.line_numbers else ""
        return f"{self.source}: row {index}{line}"


def read_table(dataset: str, split: str) -> RawTable:
    """Dispatch on what `dataset` names: a data file, a `save_to_disk` folder, or a hub id."""
    check_source(dataset)
    path = Path(dataset).expanduser()
    if path.is_file():
        readers = {".jsonl": _read_jsonl, ".json": _read_json, ".csv": _read_csv, ".parquet": _read_parquet}
        return readers[path.suffix.lower()](path)
    if path.is_dir():
        return _read_saved(path, split)
    return _read_hub(dataset, split)


def check_source(dataset: str) -> None:
    """Fail in a second when `dataset` names nothing `read_table` can read: a missing file, an unsupported file
    type, or a hub id while the hub is offline. Reads no row."""
    path = Path(dataset).expanduser()
    if path.is_file():
        if path.suffix.lower() not in FILE_SUFFIXES:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; use one of {', '.join(FILE_SUFFIXES)}.")
        return
    if path.is_dir():
        return
    if path.suffix.lower() in FILE_SUFFIXES or dataset.startswith((".", "/", "~")):
        raise FileNotFoundError(f"dataset {dataset!r} does not exist; check the path (relative to {Path.cwd()}).")
    import datasets

    if datasets.config.HF_HUB_OFFLINE or os.environ.get("HF_DATASETS_OFFLINE", "") not in ("", "0"):
        raise ValueError(
            f"dataset {dataset!r} is neither a local file nor a folder, and the hub is offline (HF_HUB_OFFLINE or "
            f"HF_DATASETS_OFFLINE is set). Give a path to a {'/'.join(FILE_SUFFIXES)} file or a save_to_disk "
            f"folder, or unset the offline flag to download it."
        )


def _read_jsonl(path: Path) -> RawTable:
    """One JSON object per line. A line that is not UTF-8, not JSON or not an object is a bad row of its own."""
    rows, lines, problems = [], [], {}
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            row, problem = _jsonl_row(raw)
            if problem is not None:
                problems[len(rows)] = problem
            rows.append(row)
            lines.append(number)
    return RawTable(str(path), _columns(rows), rows, path.parent, lines, problems)


def _jsonl_row(raw: bytes) -> tuple[dict, tuple[str, str] | None]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return {}, ("not UTF-8", _not_utf8(err, "line"))
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        return {}, ("invalid JSON", f"not valid JSON ({err}); fix or delete that line")
    if not isinstance(row, dict):
        return {}, ("invalid JSON", f"a JSON {type(row).__name__}; every line must be one JSON object (a sample)")
    return row, None


def _not_utf8(err: UnicodeDecodeError, what: str) -> str:
    byte = err.object[err.start : err.start + 1].hex()
    return f"the {what} is not UTF-8 (byte 0x{byte} at byte {err.start + 1}); re-save the file as UTF-8"


def _read_text(path: Path, encoding: str = "utf-8") -> str:
    """The whole file as text; a byte that is not UTF-8 is an error naming its line."""
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ValueError(f"{path}: line {line}: {_not_utf8(err, 'file')}.") from None


def _read_json(path: Path) -> RawTable:
    try:
        data = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err}).") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]}-style wrappers
    if not isinstance(data, list) or not all(isinstance(row, dict) for row in data):
        raise ValueError(f"{path}: expected a JSON list of objects (one per sample), or a .jsonl file.")
    return RawTable(str(path), _columns(data), data, path.parent)


def _read_csv(path: Path) -> RawTable:
    """Strict CSV: a quote left open is an error naming the line it opened on; a row whose cell count differs from
    the header's (an unquoted comma, a missing cell) is a bad row, never silently merged, cut or padded."""
    # surrogateescape keeps undecodable bytes so that only their row is bad; utf-8-sig drops an Excel BOM.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f, strict=True)
        header, rows, lines, problems = None, [], [], {}
        start = 1
        try:
            for cells in reader:
                if header is None:
                    header = cells
                elif cells:  # not a blank line
                    problem = _csv_problem(cells, header)
                    if problem is not None:
                        problems[len(rows)] = problem
                    rows.append({} if problem else _decode_csv_cells(dict(zip(header, cells))))
                    lines.append(start)
                start = reader.line_num + 1
        except csv.Error as err:
            raise ValueError(
                f"{path}: line {start}: the row starting here is not valid CSV ({err}; read up to line "
                f"{reader.line_num}). A quote opened in a cell must close at its end: close it, or double a quote "
                'that is part of the text ("").'
            ) from None
    return RawTable(str(path), list(header or []), rows, path.parent, lines, problems)


def _csv_problem(cells: list[str], header: list[str]) -> tuple[str, str] | None:
    if any(_has_undecodable(cell) for cell in cells):
        return "not UTF-8", "the row holds bytes that are not UTF-8; re-save the file as UTF-8"
    if len(cells) != len(header):
        return (
            "malformed CSV row",
            f"{len(cells)} cells but the header has {len(header)} ({header}); quote cells that contain a comma "
            "and give every column a cell",
        )
    return None


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _decode_csv_cells(row: dict[str, str]) -> dict[str, Any]:
    """CSV cells are strings; lists (several answers, boxes, several images) arrive as JSON text like ["a", "b"]."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, str) and value.strip().startswith("["):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # a literal answer that happens to start with "[" stays a string
        out[key] = value
    return out


def _read_parquet(path: Path) -> RawTable:
    import datasets

    ds = datasets.Dataset.from_parquet(str(path))
    return _from_dataset(ds, str(path), path.parent)


def _read_saved(path: Path, split: str) -> RawTable:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        raise ValueError(
            f"{path} is a folder but not one written by datasets' save_to_disk ({err}); point dataset at a "
            f"{'/'.join(FILE_SUFFIXES)} file instead."
        ) from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise ValueError(f"{path} has no split {split!r}; set split to one of {sorted(ds)}.")
        ds = ds[split]
    return _from_dataset(ds, f"{path} [{split}]", path)


def _read_hub(name: str, split: str) -> RawTable:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split)
    except Exception as err:  # the hub raises many types; all mean "could not get it"
        raise ValueError(f"could not load hub dataset {name!r} split {split!r}: {err}") from err
    return _from_dataset(ds, f"{name} [{split}]", None)


def _from_dataset(ds, source: str, root: Path | None) -> RawTable:
    """Lazy rows of a `datasets.Dataset`; image features are read as raw bytes/paths, not decoded (decoding
    every image only to validate the table would double the cost)."""
    import datasets

    for name, feature in ds.features.items():
        if isinstance(feature, datasets.Image):
            ds = ds.cast_column(name, datasets.Image(decode=False))
        elif isinstance(feature, datasets.List | datasets.Sequence) and isinstance(feature.feature, datasets.Image):
            ds = ds.cast_column(name, datasets.List(datasets.Image(decode=False)))
    return RawTable(source, list(ds.column_names), _DatasetRows(ds), root)


class _DatasetRows(Sequence):
    def __init__(self, ds) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index):
        return self.ds[index]

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.ds)


def _columns(rows: list[dict[str, Any]]) -> list[str]:
    """Union of keys in first-seen order (rows of a .jsonl file need not all have the same keys)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update(dict.fromkeys(row))
    return list(seen)


def default_image_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "glimpserl" / "images"


def store_embedded_image(value: Any, cache_dir: Path) -> Path | None:
    """Write an image embedded in the table (bytes or PIL image) to `cache_dir` under its content hash.

    Returns None when `value` carries no embedded image (then it must be a path). Content-hash names make repeated
    loads free and let several processes share the cache without locks.
    """
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        data = buffer.getvalue()
    elif isinstance(value, dict) and value.get("bytes"):
        data = value["bytes"]
    elif isinstance(value, bytes | bytearray):
        data = bytes(value)
    else:
        return None
    target = cache_dir / (hashlib.sha256(data).hexdigest()[:40] + _image_suffix(data))
    if not target.exists():
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.part")
        partial.write_bytes(data)
        partial.replace(target)  # atomic: a reader never sees half a file
    return target


def _image_suffix(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return "." + (image.format or "img").lower()
    except Exception:
        return ".img"  # unreadable: validation reports it against the row
