"""Generation throughput: Blindspot's backend vs the raw diffusers pipeline it wraps, and the fast path
(few-step DPM-Solver++) vs the pipeline's defaults, and the config's dtype vs float32, with the oracle checking
that quality holds.

    python -m benchmarks.perf_generation            # world model + a tiny SD-architecture pipeline
    python -m benchmarks.perf_generation --quick    # CI smoke run
    python -m benchmarks.perf_generation --device cuda
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from blindspot.generation.backends import DiffusersText2Image
from blindspot.world.oracle import load_or_train_oracle
from blindspot.world.spec import WorldSpec, caption

from .common import interleaved, machine, world_generator_settings, write

ROOT = Path(__file__).resolve().parents[1]


def raw_call(pipe, prompts: list[str], steps: int, guidance: float, size: int):
    """The raw diffusers call a user would write (one seeded generator for the batch)."""
    with torch.inference_mode():
        return pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, height=size, width=size,
                    generator=torch.Generator().manual_seed(0), output_type="pt").images


def wrapper_ratio(model: str, n: int, steps: int, guidance: float, size: int, device: str, repeats: int) -> dict:
    """images/s through DiffusersText2Image divided by images/s of the raw pipeline (same weights/settings)."""
    backend = DiffusersText2Image(model, device=device, num_inference_steps=steps, guidance_scale=guidance,
                                  height=size, width=size, batch_size=n, progress=False)
    pipe = backend.pipe  # the very same pipeline object: only the wrapper differs
    prompts = [caption("star", "grass")] * n
    t = interleaved({"raw": lambda: raw_call(pipe, prompts, steps, guidance, size),
                     "blindspot": lambda: backend.generate(prompts, list(range(n)))}, repeats=repeats)
    return {"images": n, "steps": steps, "seconds_raw": t["raw"], "seconds_blindspot": t["blindspot"],
            "images_per_s": n / t["blindspot"], "ratio_vs_raw": t["raw"] / t["blindspot"]}


def agreement(backend: DiffusersText2Image, oracle, spec: WorldSpec, per_pair: int) -> float:
    """Share of images whose oracle class and background both match the prompt."""
    prompts, truth = [], []
    for ci, c in enumerate(spec.classes):
        for bi, b in enumerate(spec.backgrounds):
            prompts += [caption(c, b)] * per_pair
            truth += [(ci, bi)] * per_pair
    images = backend.generate(prompts, list(range(len(prompts)))).images
    pred = oracle.predict((images.clamp(0, 1) * 255).round().to(torch.uint8))
    t = torch.tensor(truth)
    return float(((pred["class"] == t[:, 0]) & (pred["background"] == t[:, 1])).float().mean())


def side_by_side(backends: dict[str, DiffusersText2Image], oracle, spec: WorldSpec, per_pair: int,
                 n_time: int) -> dict[str, tuple[float, float]]:
    """(seconds for n_time images, measured interleaved; oracle agreement) of each backend, by name."""
    prompts = [caption("star", "grass")] * n_time
    t = interleaved({name: (lambda b=b: b.generate(prompts, list(range(n_time)))) for name, b in backends.items()},
                    repeats=2)
    return {name: (t[name], agreement(b, oracle, spec, per_pair)) for name, b in backends.items()}


def world_backend(model: str, device: str, guidance: float, steps: int, dtype: str = "float32") -> DiffusersText2Image:
    """The world model at 32 px, batch 64, with these sampler settings."""
    return DiffusersText2Image(model, device=device, dtype=dtype, num_inference_steps=steps, guidance_scale=guidance,
                               height=32, width=32, batch_size=64, progress=False)


def fast_vs_default(model: str, oracle, spec: WorldSpec, device: str, per_pair: int, n_time: int, guidance: float,
                    fast_steps: int = 20, default_steps: int = 50) -> dict:
    """The shipped fast path (20 sampler steps) against the pipeline's own default step count (50), same sampler."""
    fast = world_backend(model, device, guidance, fast_steps)
    sampler = getattr(fast.pipe.scheduler.config, "algorithm_type", None) or type(fast.pipe.scheduler).__name__
    m = side_by_side({"fast": fast, "default": world_backend(model, device, guidance, default_steps)}, oracle, spec,
                     per_pair, n_time)
    (t_fast, a_fast), (t_default, a_default) = m["fast"], m["default"]
    return {"seconds_fast": t_fast, "seconds_default": t_default, "speedup_fast_vs_default": t_default / t_fast,
            "oracle_agreement_fast": a_fast, "oracle_agreement_default": a_default,
            "agreement_drop": a_default - a_fast, "guidance": guidance, "fast": f"{fast_steps} steps {sampler}, batch 64",
            "default": f"{default_steps} steps (StableDiffusionPipeline default: 50), same sampler, batch 64"}


def dtype_vs_float32(model: str, oracle, spec: WorldSpec, device: str, per_pair: int, n_time: int, steps: int,
                     guidance: float, dtype: str) -> dict:
    """The config's dtype (auto: bfloat16 where the hardware has it) against float32: speed and oracle agreement."""
    chosen = world_backend(model, device, guidance, steps, dtype)
    m = side_by_side({"chosen": chosen, "float32": world_backend(model, device, guidance, steps)}, oracle, spec,
                     per_pair, n_time)
    (t_chosen, a_chosen), (t_fp32, a_fp32) = m["chosen"], m["float32"]
    return {"config_dtype": dtype, "resolved": str(chosen.dtype), "seconds_chosen": t_chosen,
            "seconds_float32": t_fp32, "speedup_vs_float32": t_fp32 / t_chosen,
            "oracle_agreement_chosen": a_chosen, "oracle_agreement_float32": a_fp32}


def tiny_sd(folder: Path) -> str:
    """A Stable-Diffusion-architecture pipeline with random weights, built from configs (no download)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("tiny_models", ROOT / "tests" / "tiny_models.py")
    tiny_models = importlib.util.module_from_spec(spec)  # the same builder the tests use (tests/ is no package)
    spec.loader.exec_module(tiny_models)
    return str(tiny_models.make_tiny_sd_pipeline(folder))


def main() -> None:
    """Measure and write results/perf_generation.{json,md}."""
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=32, help="images per timed call")
    p.add_argument("--per-pair", type=int, default=4, help="images per class|background prompt for oracle agreement")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    spec = WorldSpec()
    world = str(ROOT / "weights" / "world_diffusion")
    n = 4 if args.quick else args.images
    steps = (2, 5) if args.quick else (20, 50)  # quick: a plumbing check, not the numbers
    result = {"machine": machine(args.threads), "quick": args.quick}
    world_settings = world_generator_settings()  # what a run uses
    guidance = world_settings.guidance_scale
    result["world"] = wrapper_ratio(world, n, steps[0], guidance, 32, args.device, repeats=1 if args.quick else 3)
    with tempfile.TemporaryDirectory() as tmp:
        result["tiny_sd"] = wrapper_ratio(tiny_sd(Path(tmp)), n, 2 if args.quick else 10, 7.5, 64, args.device,
                                          repeats=1 if args.quick else 3)
    oracle = load_or_train_oracle(ROOT / ".cache" / "oracle", spec, steps=1500)
    result["fast_path"] = fast_vs_default(world, oracle, spec, args.device, per_pair=1 if args.quick else args.per_pair,
                                          n_time=n, guidance=guidance, fast_steps=steps[0], default_steps=steps[1])
    result["dtype"] = dtype_vs_float32(world, oracle, spec, args.device, per_pair=1 if args.quick else args.per_pair,
                                       n_time=n, steps=steps[0], guidance=guidance,
                                       dtype=world_settings.dtype)
    result["ratio_vs_raw"] = min(result["world"]["ratio_vs_raw"], result["tiny_sd"]["ratio_vs_raw"])
    result["speedup_fast_vs_default"] = result["fast_path"]["speedup_fast_vs_default"]
    result["agreement_drop"] = result["fast_path"]["agreement_drop"]
    result["images_per_s"] = result["world"]["images_per_s"]
    f, d = result["fast_path"], result["dtype"]
    write("perf_generation", result, [
        ["measure", "value", "target"],
        ["world: Blindspot / raw diffusers images/s", f"{result['world']['ratio_vs_raw']:.3f}", ">= 0.97"],
        ["tiny SD: Blindspot / raw diffusers images/s", f"{result['tiny_sd']['ratio_vs_raw']:.3f}", ">= 0.97"],
        [f"world images/s ({steps[0]} steps, batch {n})", f"{result['images_per_s']:.2f}", "-"],
        ["fast path speed-up vs defaults", f"{f['speedup_fast_vs_default']:.2f}x", ">= 1.5x"],
        ["oracle agreement default / fast", f"{f['oracle_agreement_default']:.1%} / {f['oracle_agreement_fast']:.1%}",
         "drop <= 2 pts"],
        [f"generator.dtype={d['config_dtype']} ({d['resolved']}) speed-up vs float32", f"{d['speedup_vs_float32']:.2f}x",
         "-"],
        ["oracle agreement float32 / " + d["resolved"],
         f"{d['oracle_agreement_float32']:.1%} / {d['oracle_agreement_chosen']:.1%}", "drop <= 2 pts"],
    ], args.quick)


if __name__ == "__main__":
    main()
