"""Read an offline W&B run back (the `.wandb` transaction log: a LevelDB-style record log of protobuf Records)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7  # ":W&B" + 2-byte magic + 1-byte version
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: str | Path):
    """Every protobuf Record of a `.wandb` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B transaction log")
    pos, pending = HEADER, b""
    while pos + 7 <= len(data):
        left = BLOCK - pos % BLOCK
        if left < 7:  # a block's tail too short for a header is padding
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == FULL:
            pending = chunk
        elif kind in (FIRST, MIDDLE):
            pending = (pending if kind == MIDDLE else b"") + chunk
            continue
        elif kind == LAST:
            pending += chunk
        else:
            break  # zero padding at the end
        record = pb.Record()
        record.ParseFromString(pending)
        pending = b""
        yield record


def history_and_summary(run_dir: str | Path) -> tuple[list[dict], dict]:
    """(history rows as {key: value}, the final summary) of an offline run folder."""
    log = next(Path(run_dir).glob("run-*.wandb"))
    history, summary = [], {}
    for r in records(log):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            history.append({"/".join(i.nested_key) or i.key: json.loads(i.value_json) for i in r.history.item})
        elif kind == "summary":
            for i in r.summary.update:
                summary["/".join(i.nested_key) or i.key] = json.loads(i.value_json)
    newest: dict = {}
    for row in history:  # the run summary: each key's newest logged value, then explicit summary updates
        newest.update(row)
    return history, {**newest, **summary}
