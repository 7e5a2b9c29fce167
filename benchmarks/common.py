"""Shared plumbing of the benchmarks: machine facts, side-by-side timing, JSON + markdown output."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("BLINDSPOT_RESULTS", Path(__file__).parent / "results"))
# the quick (--quick) benchmarks' miniature run of the default world: tiny splits, two epochs
QUICK_RUN = ["data.train_per_class=60", "data.val_per_group=6", "data.test_per_group=2", "data.batch_size=32",
             "trainer.max_epochs=2"]


def machine(threads: int | None = None) -> dict:
    """Where the numbers were measured (and how busy the machine was)."""
    import diffusers
    import open_clip

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": threads or torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "load_average_at_start": os.getloadavg(), "torch": torch.__version__,
            "diffusers": diffusers.__version__, "open_clip": open_clip.__version__}


def world_generator_settings() -> DictConfig:
    """conf/generator/world.yaml: the sampler settings a run on the built-in world uses."""
    return OmegaConf.load(ROOT / "conf" / "generator" / "world.yaml")


def interleaved(fns: dict[str, Callable[[], object]], repeats: int = 3, warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, measured in alternation (A B A B ...) so drift hits all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def checkpoint_classifier(ckpt: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    """A run's saved classifier, loaded once, as uint8 images -> predicted classes (the validation step's forward)."""
    from lightning_modules.classifier import ImageClassifier

    model = ImageClassifier.load_from_checkpoint(str(ckpt), map_location="cpu", optimizer=None, weights_only=False)
    model.eval()

    def predict(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([model(images[i : i + 256]).argmax(-1) for i in range(0, len(images), 256)])

    return predict


def checkpoint_predictions(ckpt: Path, images: torch.Tensor) -> torch.Tensor:
    """Predicted classes of uint8 images by a run's saved classifier (loaded for this one call)."""
    return checkpoint_classifier(ckpt)(images)


def table_cell(text: str) -> str:
    """A markdown table cell with its pipes escaped ('star|grass' would split the row)."""
    return text.replace("|", "\\|")


def write(name: str, result: dict, table: list[list], quick: bool) -> Path:
    """Write results/<name>[_quick].json and a markdown table next to it; returns the JSON path."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"{name}_quick" if quick else name
    path = RESULTS / f"{stem}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    header, *rows = table
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows]
    m = result.get("machine", {})
    lines.append(f"\nMachine: {m.get('processor')}, {m.get('cpu_count')} cores, {m.get('torch_threads')} torch threads, "
                 f"load at start {m.get('load_average_at_start')}; torch {m.get('torch')}.")
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return path
