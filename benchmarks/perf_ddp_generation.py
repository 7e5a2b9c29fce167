"""Generation sharded over processes: 2 processes x 1 thread (each a disjoint half) vs 1 process x 2 threads.

Per-image seeds should make the union of the shards the same images as the single run: each image is compared
exactly (as the uint8 PNG pixels a run saves), by seed.

    python -m benchmarks.perf_ddp_generation            # 128 world images
    python -m benchmarks.perf_ddp_generation --quick
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

from .common import machine, write

ROOT = Path(__file__).resolve().parents[1]


def _work(rank: int, world: int, n: int, threads: int, steps: int, queue) -> None:
    try:
        torch.set_num_threads(threads)
        from blindspot.generation.backends import DiffusersText2Image
        from blindspot.images import to_uint8
        from blindspot.world.spec import caption

        backend = DiffusersText2Image(str(ROOT / "weights" / "world_diffusion"), height=32, width=32,
                                      num_inference_steps=steps, progress=False)
        _ = backend.pipe
        prompts = [caption("star", "grass")] * n
        seeds = list(range(n))[rank::world]
        queue.put(("ready", rank, time.time()))
        start = time.time()
        images = backend.generate(prompts[rank::world], seeds).images
        end = time.time()
        pixels = to_uint8(images).numpy()  # what a run saves; numpy pickles plainly through the queue
        queue.put(("done", rank, start, end, images.shape[0], dict(zip(seeds, pixels))))
    except BaseException as err:  # tell the parent instead of leaving it waiting on the queue
        queue.put(("error", rank, f"{type(err).__name__}: {err}"))
        raise


def run(world: int, n: int, threads: int, steps: int) -> dict:
    """Spawn `world` processes that each generate their shard; time from the first start to the last finish."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_work, args=(r, world, n, threads, steps, queue)) for r in range(world)]
    for p in procs:
        p.start()
    msgs = []
    while sum(m[0] in ("done", "error") for m in msgs) < world:
        msgs.append(queue.get(timeout=1800))
        if msgs[-1][0] == "error":
            for p in procs:
                p.terminate()
            raise RuntimeError(f"generation failed on rank {msgs[-1][1]}: {msgs[-1][2]}")
    for p in procs:
        p.join()
    done = [m for m in msgs if m[0] == "done"]
    start, end = min(m[2] for m in done), max(m[3] for m in done)
    return {"processes": world, "threads_each": threads, "images": sum(m[4] for m in done),
            "seconds": end - start, "images_per_s": sum(m[4] for m in done) / (end - start),
            "by_seed": {seed: image for m in done for seed, image in m[5].items()}}


def compare_images(a: dict, b: dict) -> dict:
    """Exact per-image comparison of two {seed: uint8 [3, h, w]} sets: how many are identical, the largest gap."""
    import numpy as np

    common = sorted(set(a) & set(b))
    diffs = [int(np.abs(a[s].astype(np.int16) - b[s].astype(np.int16)).max()) for s in common]
    return {"images_compared": len(common), "identical_images": sum(d == 0 for d in diffs),
            "max_abs_pixel_difference": max(diffs, default=0),
            "missing_seeds": sorted(set(a) ^ set(b)),
            "all_identical": bool(common) and set(a) == set(b) and max(diffs) == 0}


def main() -> None:
    """Measure and write results/perf_ddp_generation.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    n, steps = (8, 2) if args.quick else (128, 20)
    one = run(1, n, 2, steps)
    two = run(2, n, 1, steps)
    same = compare_images(one.pop("by_seed"), two.pop("by_seed"))
    result = {"machine": machine(2), "quick": args.quick, "one_process": one, "two_processes": two,
              "speedup_2proc_vs_1proc": two["images_per_s"] / one["images_per_s"], **same,
              "note": "same total threads (2); images compared exactly per seed as uint8 pixels (0-255)"}
    write("perf_ddp_generation", result, [
        ["setup", "images/s", "seconds"],
        ["1 process x 2 threads", f"{one['images_per_s']:.2f}", f"{one['seconds']:.1f}"],
        ["2 processes x 1 thread (sharded)", f"{two['images_per_s']:.2f}", f"{two['seconds']:.1f}"],
        ["speed-up", f"{result['speedup_2proc_vs_1proc']:.2f}x", ""],
        ["identical images (uint8, per seed)", f"{same['identical_images']} of {same['images_compared']}",
         f"max pixel difference {same['max_abs_pixel_difference']} of 255"],
    ], args.quick)


if __name__ == "__main__":
    main()
