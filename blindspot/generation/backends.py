"""Text-to-image backends: prompts + seeds -> images, one interface for the world model and real ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

import torch

from ..clip import WeightsNotFoundError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


@dataclass
class GenerationOutput:
    """Generated images as float [n, 3, h, w] in [0, 1] (NaN kept: filters count them), with their inputs."""

    images: torch.Tensor
    prompts: list[str]
    seeds: list[int]


class Text2ImageBackend(Protocol):
    """What the augmentation callback needs from a generator."""

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        ...


def _import_custom_components() -> None:
    # The world pipeline keeps its lossless VAE in blindspot; diffusers loads it once the module is imported.
    from ..world import pixel_vae  # noqa: F401


class DiffusersText2Image:
    """Any diffusers text-to-image pipeline by hub id (from the local cache) or local folder.

    Each image gets its own seeded `torch.Generator`, so an image depends only on (prompt, seed) — not on
    batch size, batch position, rank or resume point.
    """

    def __init__(
        self,
        model: str,
        device: str = "cpu",
        dtype: str = "float32",
        num_inference_steps: int = 20,
        guidance_scale: float = 3.0,
        height: int | None = None,
        width: int | None = None,
        batch_size: int = 64,
        scheduler: str | None = None,
        negative_prompt: str | None = None,
        config_key: str = "generator.model",
        progress: bool = True,
    ):
        if dtype not in DTYPES:
            raise ValueError(f"generator dtype {dtype!r}: choose one of {sorted(DTYPES)}")
        if num_inference_steps < 1 or batch_size < 1:
            raise ValueError("generator num_inference_steps and batch_size must be >= 1")
        self.model, self.device, self.dtype = model, device, DTYPES[dtype]
        self.steps, self.guidance, self.height, self.width = num_inference_steps, guidance_scale, height, width
        self.batch_size, self.scheduler_name, self.negative_prompt = batch_size, scheduler, negative_prompt
        self.config_key, self.progress = config_key, progress
        self._pipe = None

    @property
    def pipe(self):
        """The loaded diffusers pipeline (loaded on first use)."""
        if self._pipe is None:
            self._pipe = self.load()
        return self._pipe

    def load(self):
        """Load the pipeline with AutoPipelineForText2Image, offline, with a clear error when weights are absent."""
        from diffusers import AutoPipelineForText2Image

        _import_custom_components()
        local = Path(self.model).expanduser()
        if local.exists() and not (local / "model_index.json").is_file():
            raise WeightsNotFoundError(f"{local} has no model_index.json: it is not a diffusers pipeline folder "
                                       f"(set {self.config_key} to a folder saved with `save_pretrained`)")
        if self.model.startswith(("/", ".", "~")) and not local.exists():
            raise WeightsNotFoundError(
                f"{self.config_key}={self.model!r} does not exist. Point it at a diffusers pipeline folder (saved with "
                "`save_pretrained`, or a Hugging Face snapshot), or use a hub id already in the local cache. The "
                "built-in world's model ships in weights/world_diffusion (`python -m blindspot.world.train_diffusion` "
                "rebuilds it).")
        try:
            source = str(local) if local.exists() else self.model  # a folder (user dir expanded) or a hub id
            pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=self.dtype, local_files_only=True)
        except Exception as err:  # diffusers/hub/safetensors raise many kinds for missing or corrupt weights
            raise WeightsNotFoundError(
                f"could not load text-to-image weights {self.model!r} (missing or corrupt; no model hub is reachable "
                f"here). "
                f"On a machine with network run `huggingface-cli download {self.model}` (fills the Hugging Face "
                f"cache; copy ~/.cache/huggingface here) or `save_pretrained` the pipeline to a folder, then set "
                f"{self.config_key}=<that folder>. ({type(err).__name__}: {err})") from err
        if self.scheduler_name:
            pipe.scheduler = make_scheduler(self.scheduler_name, pipe.scheduler.config)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def _call(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        kwargs = dict(num_inference_steps=self.steps, guidance_scale=self.guidance, generator=generators,
                      output_type="pt", height=self.height, width=self.width)
        if self.negative_prompt:
            kwargs["negative_prompt"] = [self.negative_prompt] * len(prompts)
        with torch.inference_mode():
            images = self.pipe(list(prompts), **kwargs).images
        return images.float().cpu()

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """Images for (prompt, seed) pairs, in batches; halves the batch on CUDA out-of-memory and goes on."""
        if len(prompts) != len(seeds):
            raise ValueError("generate needs one seed per prompt")
        out, i = [], 0
        while i < len(prompts):
            n = min(self.batch_size, len(prompts) - i)
            try:
                out.append(self._call(list(prompts[i : i + n]), list(seeds[i : i + n])))
                i += n
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory while generating: batch size halved to %d, continuing", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        images = torch.cat(out) if out else torch.zeros(0, 3, self.height or 0, self.width or 0)
        return GenerationOutput(images, list(prompts), [int(s) for s in seeds])


SCHEDULERS = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, config):
    """A diffusers scheduler by short name, built from another scheduler's config (same noise schedule)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r} (generator.scheduler); known: {sorted(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **extra)
