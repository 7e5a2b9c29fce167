"""The append-only JSONL manifest of generated images: one file per rank, read back merged.

Every record is one line written with a single `write` and fsynced; a line cut short by a kill has no
newline and is ignored on reading, so the manifest is always a valid list of whole records.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Iterable

log = logging.getLogger(__name__)


def manifest_path(directory: str | os.PathLike, rank: int = 0) -> Path:
    """The manifest file a rank appends to."""
    return Path(directory) / f"manifest-rank{rank}.jsonl"


def append_records(path: str | os.PathLike, records: Iterable[dict]) -> None:
    """Append records as whole lines and fsync (atomic per record)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = "".join(json.dumps(r, sort_keys=True) + "\n" for r in records)
    if not payload:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, payload.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: str | os.PathLike) -> list[dict]:
    """Whole records of one manifest file (a torn last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    text = path.read_text()
    lines = text.split("\n")
    if lines and lines[-1] != "":
        log.warning("%s: ignoring a torn last record (%d bytes)", path, len(lines[-1]))
    for line in lines[:-1]:
        if line.strip():
            records.append(json.loads(line))
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
