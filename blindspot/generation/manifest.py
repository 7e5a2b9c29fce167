"""The append-only JSONL manifest of generated images: one file per rank, read back merged.

Every record is one line, written with `write` and fsynced. A kill in the middle of a write leaves a last line
without its newline (a torn line): reading ignores it, and the next `append_records` first moves its bytes to
`<manifest>.torn` and cuts the file back to its last whole record, so new records never land on a torn line.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)

_CHUNK = 1 << 16


def manifest_path(directory: str | os.PathLike, rank: int = 0) -> Path:
    """The manifest file a rank appends to."""
    return Path(directory) / f"manifest-rank{rank}.jsonl"


def torn_path(path: str | os.PathLike) -> Path:
    """Where `repair_torn_tail` keeps the bytes of torn lines it cut off (never read as records)."""
    return Path(f"{path}.torn")


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def repair_torn_tail(path: str | os.PathLike) -> int:
    """Cut a torn last line (no newline) off the file, keeping its bytes in `<path>.torn`; returns their count."""
    path = Path(path)
    if not path.is_file():
        return 0
    with open(path, "r+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        end = size  # search backwards for the newline that ends the last whole record
        keep = 0
        while end > 0:
            start = max(0, end - _CHUNK)
            f.seek(start)
            at = f.read(end - start).rfind(b"\n")
            if at >= 0:
                keep = start + at + 1
                break
            end = start
        f.seek(keep)
        torn = f.read()
        fd = os.open(torn_path(path), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:  # the torn bytes are saved (and fsynced) before they are cut off
            _write_all(fd, torn + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        f.truncate(keep)
        f.flush()
        os.fsync(f.fileno())
    log.warning("%s: cut off a torn last line (%d bytes, a kill during a write); its bytes are in %s",
                path, len(torn), torn_path(path))
    return len(torn)


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as whole lines and fsync, after repairing a torn last line (see `repair_torn_tail`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not payload:
        return
    repair_torn_tail(path)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        _write_all(fd, payload.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _salvage(line: str) -> dict | None:
    """The whole record at the end of a line that a torn line was glued onto (the old append bug), if any."""
    start = line.find("{", 1)
    while start > 0:
        try:
            record = json.loads(line[start:])
        except json.JSONDecodeError:
            start = line.find("{", start + 1)
            continue
        return record if isinstance(record, dict) else None
    return None


def read_records(path: str | os.PathLike) -> list[dict]:
    """Whole records of one manifest file; torn or undecodable lines are skipped with a warning counting them."""
    path = Path(path)
    if not path.is_file():
        return []
    records, skipped, salvaged = [], 0, 0
    lines = path.read_text(errors="replace").split("\n")
    if lines[-1] != "":
        log.warning("%s: ignoring a torn last record (%d bytes)", path, len(lines[-1]))
    for line in lines[:-1]:
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            record = _salvage(line)
            salvaged += record is not None
        if isinstance(record, dict):
            records.append(record)
        else:
            skipped += 1
    if skipped or salvaged:
        log.warning("%s: skipped %d undecodable line(s); recovered %d record(s) written onto a torn line",
                    path, skipped, salvaged)
    return records


def read_manifest(directory: str | os.PathLike) -> list[dict]:
    """All ranks' records, one per `id` (first wins), in (round, id) order."""
    seen, merged = set(), []
    for path in sorted(Path(directory).glob("manifest-rank*.jsonl")):
        for r in read_records(path):
            if r["id"] not in seen:
                seen.add(r["id"])
                merged.append(r)
    return sorted(merged, key=lambda r: (r.get("round", 0), r["id"]))
