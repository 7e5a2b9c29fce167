"""Crash safety of the JSONL manifest: a writer killed in the middle of a line loses nothing recorded before."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from blindspot.generation.manifest import (append_records, manifest_path, read_manifest, read_records,
                                           repair_torn_tail, torn_path)

ROOT = Path(__file__).resolve().parents[1]

# A writer process: appends records 0..n-1 one call at a time, the way the round runner does. When the record
# `kill_at` is written, its write puts only the first half of the bytes on disk, tells the parent, and waits
# to be SIGKILLed: a real kill inside append_records, in the middle of a line.
WRITER = textwrap.dedent("""
    import os, sys, time
    from blindspot.generation import manifest

    path, n, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    real_write, armed = os.write, [False]

    def half_then_hang(fd, data):
        if not armed[0]:
            return real_write(fd, data)
        written = real_write(fd, bytes(data[: len(data) // 2]))
        os.fsync(fd)
        print("torn", flush=True)
        time.sleep(120)
        return written

    def record(i):
        return {"id": f"r0-{i:04d}", "round": 0, "kept": i % 3 == 0, "payload": "x" * 5000, "seed": i}

    os.write = half_then_hang
    for i in range(n):
        armed[0] = i == kill_at
        manifest.append_records(path, [record(i)])
""")


def record(i: int) -> dict:
    """What the writer appends for index i (kept in step with WRITER)."""
    return {"id": f"r0-{i:04d}", "round": 0, "kept": i % 3 == 0, "payload": "x" * 5000, "seed": i}


def kill_writer_mid_line(path: Path, n: int, kill_at: int) -> None:
    """Run the writer until it has written half of record `kill_at`, then SIGKILL it."""
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(n), str(kill_at)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)  # `-c` puts the working directory on sys.path
    try:
        assert proc.stdout.readline().strip() == "torn"
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_a_writer_killed_mid_line_loses_nothing_and_the_resumed_round_ends_exact(tmp_path, caplog):
    """Records before the kill survive, the torn bytes are moved aside, resuming appends the rest exactly once."""
    path, n, kill_at = manifest_path(tmp_path, 0), 12, 7
    kill_writer_mid_line(path, n, kill_at)
    raw = path.read_bytes()
    assert not raw.endswith(b"\n")  # the kill really left a torn line
    with caplog.at_level(logging.WARNING):
        before = read_records(path)
    assert before == [record(i) for i in range(kill_at)]
    assert "torn last record" in caplog.text

    # resume as the round runner does: skip the ids already recorded, append the rest one call at a time
    done = {r["id"] for r in read_manifest(tmp_path)}
    for i in range(n):
        if record(i)["id"] not in done:
            append_records(path, [record(i)])
    assert read_records(path) == [record(i) for i in range(n)]  # each exactly once, in order
    assert read_manifest(tmp_path) == [record(i) for i in range(n)]
    assert path.read_bytes().startswith(raw[: raw.rindex(b"\n") + 1])  # earlier bytes untouched
    assert torn_path(path).read_bytes() == raw[raw.rindex(b"\n") + 1:] + b"\n"  # nothing thrown away


def test_repair_leaves_a_whole_manifest_alone_and_handles_a_file_that_is_all_torn(tmp_path):
    """No newline at all: the whole file is one torn line; a clean file is not touched."""
    clean = manifest_path(tmp_path, 0)
    append_records(clean, [{"id": "a"}, {"id": "b"}])
    before = clean.read_bytes()
    assert repair_torn_tail(clean) == 0 and clean.read_bytes() == before and not torn_path(clean).exists()

    torn = manifest_path(tmp_path, 1)
    torn.write_bytes(b'{"id": "c", "pa')
    append_records(torn, [{"id": "d"}])
    assert read_records(torn) == [{"id": "d"}]
    assert torn_path(torn).read_bytes() == b'{"id": "c", "pa\n'


def test_reading_skips_and_counts_torn_lines_in_the_middle(tmp_path, caplog):
    """A manifest damaged by the old append (a record glued onto a torn line) reads without JSONDecodeError."""
    path = manifest_path(tmp_path, 0)
    path.write_text('{"id": "a"}\n{"id": "b", "pa{"id": "c"}\nnot json\n{"id": "d"}\n')
    with caplog.at_level(logging.WARNING):
        records = read_records(path)
    assert records == [{"id": "a"}, {"id": "c"}, {"id": "d"}]  # "c" was whole, only its line was dirty
    assert "skipped 1 undecodable line(s); recovered 1 record(s)" in caplog.text
    assert [r["id"] for r in read_manifest(tmp_path)] == ["a", "c", "d"]


def test_a_long_record_is_written_whole(tmp_path):
    """A record far larger than one write chunk reads back equal (short writes are continued)."""
    path = manifest_path(tmp_path, 0)
    big = {"id": "big", "payload": "y" * 3_000_000}
    append_records(path, [big, {"id": "after"}])
    assert read_records(path) == [big, {"id": "after"}]
    assert json.loads(path.read_text().split("\n")[0]) == big
