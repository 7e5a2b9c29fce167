"""Generation backends: text-to-image (prompts + seeds -> images) and image-to-image editing (images + prompts +
seeds -> images), one interface each for the world model and real ones."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
import torch.nn.functional as F

from ..clip import WeightsNotFoundError

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def native_bfloat16(device: str) -> bool:
    """Whether the device computes bfloat16 in hardware: CUDA with bf16, or a CPU with AVX512-BF16 or AMX-BF16."""
    if str(device).startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_dtype(dtype: str, device: str, config_key: str = "generator.dtype") -> torch.dtype:
    """The torch dtype a config names; "auto": bfloat16 where the device computes it natively, else float32."""
    if dtype == "auto":
        native = native_bfloat16(device)
        log.info("%s=auto: %s on %s (%s)", config_key, "bfloat16" if native else "float32", device,
                 "it computes bfloat16 natively" if native else "no native bfloat16")
        return torch.bfloat16 if native else torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"{config_key}={dtype!r}: choose auto or one of {sorted(DTYPES)}")
    if DTYPES[dtype] == torch.bfloat16 and not native_bfloat16(device):
        log.warning("%s=%s on %s, which has no native bfloat16: expect it to be far slower than float32 "
                    "(set %s=auto or float32)", config_key, dtype, device, config_key)
    return DTYPES[dtype]


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


class Image2ImageBackend(Protocol):
    """What an editing remedy needs from an editor: real images pushed toward prompts."""

    def edit(self, images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int],
             strength: float | None = None) -> GenerationOutput:
        ...


def _import_custom_components() -> None:
    # The world pipeline keeps its lossless VAE in blindspot; diffusers loads it once the module is imported.
    from ..world import pixel_vae  # noqa: F401


def load_pipeline(auto_class: str, model: str, dtype: torch.dtype, config_key: str):
    """A diffusers Auto* pipeline from a folder or a cached hub id, offline, with a clear error when absent."""
    import diffusers

    _import_custom_components()
    local = Path(model).expanduser()
    if local.exists() and not (local / "model_index.json").is_file():
        raise WeightsNotFoundError(f"{local} has no model_index.json: it is not a diffusers pipeline folder "
                                   f"(set {config_key} to a folder saved with `save_pretrained`)")
    if model.startswith(("/", ".", "~")) and not local.exists():
        raise WeightsNotFoundError(
            f"{config_key}={model!r} does not exist. Point it at a diffusers pipeline folder (saved with "
            "`save_pretrained`, or a Hugging Face snapshot), or use a hub id already in the local cache. The "
            "built-in world's model ships in weights/world_diffusion (`python -m blindspot.world.train_diffusion` "
            "rebuilds it).")
    try:
        source = str(local) if local.exists() else model  # a folder (user dir expanded) or a hub id
        return getattr(diffusers, auto_class).from_pretrained(source, dtype=dtype, local_files_only=True)
    except Exception as err:  # diffusers/hub/safetensors raise many kinds for missing or corrupt weights
        raise WeightsNotFoundError(
            f"could not load diffusion weights {model!r} (missing or corrupt; no model hub is reachable here). "
            f"On a machine with network run `huggingface-cli download {model}` (fills the Hugging Face "
            f"cache; copy ~/.cache/huggingface here) or `save_pretrained` the pipeline to a folder, then set "
            f"{config_key}=<that folder>. ({type(err).__name__}: {err})") from err


def _size_error(prefix: str, asked: tuple[int, int], got: tuple[int, int], why: str = "") -> ValueError:
    return ValueError(f"the {prefix} returned {got[0]}x{got[1]} images where {asked[0]}x{asked[1]} were asked{why}: "
                      f"set {prefix}.height and {prefix}.width to a size the pipeline makes (a multiple of its VAE "
                      f"scale factor; the world model: 32x32, Stable Diffusion 1.5: 512x512)")


class _DiffusersBackend:
    """What the diffusers backends share: validated settings, lazy offline loading, seeded batches, OOM halving."""

    auto_class = ""

    def __init__(self, model: str | None, device: str = "cpu", dtype: str = "float32", num_inference_steps: int = 20,
                 guidance_scale: float = 3.0, height: int | None = None, width: int | None = None,
                 batch_size: int = 64, scheduler: str | None = None, negative_prompt: str | None = None,
                 config_key: str = "generator.model", progress: bool = True):
        prefix = config_key.rsplit(".", 1)[0]
        if num_inference_steps < 1 or batch_size < 1:
            raise ValueError(f"{prefix}.num_inference_steps and {prefix}.batch_size must be >= 1")
        if (height is None) != (width is None) or any(s is not None and s < 1 for s in (height, width)):
            raise ValueError(f"{prefix}.height={height} and {prefix}.width={width}: give both (>= 1) or neither")
        self.model, self.device, self.dtype = model, device, resolve_dtype(dtype, device, f"{prefix}.dtype")
        self.steps, self.guidance, self.height, self.width = num_inference_steps, guidance_scale, height, width
        self.batch_size, self.scheduler_name, self.negative_prompt = batch_size, scheduler, negative_prompt
        self.config_key, self.config_prefix, self.progress = config_key, prefix, progress
        self._pipe = None

    @property
    def pipe(self):
        """The loaded diffusers pipeline (loaded on first use)."""
        if self._pipe is None:
            self._pipe = self.load()
        return self._pipe

    def _finish(self, pipe):
        if self.scheduler_name:
            key = f"{self.config_prefix}.scheduler"
            pipe.scheduler = make_scheduler(self.scheduler_name, pipe.scheduler.config, key)
        pipe = pipe.to(self.device)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def load(self):
        """Load the pipeline with the Auto* class, offline, with a clear error when weights are absent."""
        return self._finish(load_pipeline(self.auto_class, self.model, self.dtype, self.config_key))

    def _common_kwargs(self, n: int, seeds: list[int]) -> dict:
        kwargs = dict(num_inference_steps=self.steps, guidance_scale=self.guidance, output_type="pt",
                      generator=[torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds])
        if self.negative_prompt:
            kwargs["negative_prompt"] = [self.negative_prompt] * n
        return kwargs

    def _batches(self, n: int, call: Callable[[int, int], torch.Tensor], asked: tuple[int, int] | None,
                 empty_size: tuple[int, int]) -> torch.Tensor:
        """call(start, stop) over [0, n) in batches; halves the batch on CUDA out-of-memory; checks the size."""
        out, i = [], 0
        while i < n:
            k = min(self.batch_size, n - i)
            try:
                images = call(i, i + k)
            except torch.cuda.OutOfMemoryError:
                if self.batch_size == 1:
                    raise
                self.batch_size = max(1, self.batch_size // 2)
                log.warning("out of memory while generating: batch size halved to %d, continuing", self.batch_size)
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                continue
            if asked is not None and tuple(images.shape[-2:]) != tuple(asked):
                raise _size_error(self.config_prefix, asked, tuple(images.shape[-2:]))
            out.append(images)
            i += k
        return torch.cat(out) if out else torch.zeros(0, 3, *empty_size)


class DiffusersText2Image(_DiffusersBackend):
    """Any diffusers text-to-image pipeline by hub id (from the local cache) or local folder.

    Each image gets its own seeded `torch.Generator`, so an image depends only on (prompt, seed) — not on
    batch size, batch position, rank or resume point.
    """

    auto_class = "AutoPipelineForText2Image"

    def _call(self, prompts: list[str], seeds: list[int]) -> torch.Tensor:
        kwargs = self._common_kwargs(len(prompts), seeds)
        try:
            with torch.inference_mode():
                images = self.pipe(list(prompts), height=self.height, width=self.width, **kwargs).images
        except ValueError as err:
            if "divisible by" in str(err):  # diffusers' check of height/width against the VAE scale
                raise ValueError(f"{err} (set {self.config_prefix}.height and {self.config_prefix}.width)") from err
            raise
        return images.float().cpu()

    def generate(self, prompts: Sequence[str], seeds: Sequence[int]) -> GenerationOutput:
        """Images for (prompt, seed) pairs, in batches; halves the batch on CUDA out-of-memory and goes on."""
        if len(prompts) != len(seeds):
            raise ValueError("generate needs one seed per prompt")
        prompts, seeds = list(prompts), [int(s) for s in seeds]
        asked = (self.height, self.width) if self.height is not None else None
        images = self._batches(len(prompts), lambda a, b: self._call(prompts[a:b], seeds[a:b]), asked,
                               (self.height or 0, self.width or 0))
        return GenerationOutput(images, prompts, seeds)


class DiffusersImage2Image(_DiffusersBackend):
    """Any diffusers image-to-image pipeline (SDEdit; the ALIA line): real images edited toward prompts.

    Loaded with `AutoPipelineForImage2Image` from a folder or cached hub id, or built with `from_pipe` from a
    text-to-image backend's pipeline (`share_pipe_with`: the same weights, no second copy in memory). Each
    image gets its own seeded generator, so an edit depends only on (image, prompt, seed, strength). With
    strength s the sampler runs int(num_inference_steps * s) of its steps, starting from the image noised to
    level s (0: the image unchanged, 1: nothing of it kept).
    """

    auto_class = "AutoPipelineForImage2Image"

    def __init__(self, model: str | None = None, share_pipe_with=None, strength: float = 0.5,
                 config_key: str = "editor.model", **settings):
        super().__init__(model, config_key=config_key, **settings)  # settings: as DiffusersText2Image's
        if model is None and share_pipe_with is None:
            raise ValueError(f"{self.config_prefix}: set {config_key} to a diffusers pipeline folder or hub id "
                             "(or build the editor with share_pipe_with=<a text-to-image backend>)")
        self.check_strength(strength)
        self.strength, self.share_pipe_with = strength, share_pipe_with

    def check_strength(self, strength: float) -> None:
        """A clear error for a strength outside (0, 1] or one that leaves the sampler no step."""
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"{self.config_prefix}.strength={strength}: must be in (0, 1] (0 would return the "
                             "image unchanged)")
        if int(self.steps * strength) < 1:
            raise ValueError(f"{self.config_prefix}.strength={strength} x {self.config_prefix}.num_inference_steps="
                             f"{self.steps} leaves no denoising step: raise either so their product is >= 1")

    @classmethod
    def from_text2image(cls, backend: DiffusersText2Image, **kwargs) -> "DiffusersImage2Image":
        """An editor sharing a text-to-image backend's weights and settings (kwargs override them)."""
        settings = dict(device=backend.device, dtype=next(k for k, v in DTYPES.items() if v == backend.dtype),
                        num_inference_steps=backend.steps, guidance_scale=backend.guidance,
                        batch_size=backend.batch_size, negative_prompt=backend.negative_prompt,
                        progress=backend.progress)
        return cls(model=backend.model, share_pipe_with=backend, **{**settings, **kwargs})

    def load(self):
        """Load the pipeline (or derive it from the shared text-to-image pipeline), offline."""
        if self.share_pipe_with is None:
            return super().load()
        from diffusers import AutoPipelineForImage2Image

        _import_custom_components()
        source = getattr(self.share_pipe_with, "pipe", self.share_pipe_with)
        # a scheduler of its own: schedulers keep per-call state (timesteps, begin index)
        scheduler = type(source.scheduler).from_config(source.scheduler.config)
        return self._finish(AutoPipelineForImage2Image.from_pipe(source, scheduler=scheduler))

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """Float [n, 3, h, w] in [0, 1] (uint8 accepted), resized to height x width when those are set."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"edit needs images shaped [n, 3, h, w], got {tuple(images.shape)}")
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = torch.nan_to_num(x, nan=0.0).clamp(0, 1)
        if self.height is not None and tuple(x.shape[-2:]) != (self.height, self.width):
            x = F.interpolate(x, size=(self.height, self.width), mode="bilinear", antialias=True,
                              align_corners=False).clamp(0, 1)
        return x

    def _call(self, images: torch.Tensor, prompts: list[str], seeds: list[int], strength: float) -> torch.Tensor:
        kwargs = self._common_kwargs(len(prompts), seeds)
        with torch.inference_mode():
            out = self.pipe(list(prompts), image=images.to(self.device, self.dtype), strength=strength, **kwargs)
        return out.images.float().cpu()

    def edit(self, images: torch.Tensor, prompts: Sequence[str], seeds: Sequence[int],
             strength: float | Sequence[float] | None = None) -> GenerationOutput:
        """Edited images for (image, prompt, seed) triples at `strength` (default: the configured one; one per
        image allowed, e.g. by the failure attribute's kind)."""
        if not len(images) == len(prompts) == len(seeds):
            raise ValueError(f"edit needs one prompt and one seed per image (got {len(images)} images, "
                             f"{len(prompts)} prompts, {len(seeds)} seeds)")
        strength = self.strength if strength is None else strength
        if isinstance(strength, (int, float)):
            strengths = [float(strength)] * len(prompts)
        else:
            strengths = [float(v) for v in strength]
        if len(strengths) != len(prompts):
            raise ValueError(f"edit got {len(strengths)} strengths for {len(prompts)} images")
        for value in set(strengths):
            self.check_strength(value)
        x, prompts, seeds = self.prepare(images), list(prompts), [int(s) for s in seeds]
        size = tuple(x.shape[-2:])
        out = torch.zeros(len(prompts), 3, *size)
        for value in sorted(set(strengths)):  # one pipeline call per strength (diffusers takes one per call)
            idx = [i for i, v in enumerate(strengths) if v == value]
            sub_x, sub_p, sub_s = x[idx], [prompts[i] for i in idx], [seeds[i] for i in idx]
            out[idx] = self._batches(len(idx), lambda a, b: self._call(sub_x[a:b], sub_p[a:b], sub_s[a:b], value),
                                     size, size)
        return GenerationOutput(out, prompts, seeds)


SCHEDULERS = {
    "dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "sde-dpmsolver++": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "ddim": ("DDIMScheduler", {}),
    "ddpm": ("DDPMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
}


def make_scheduler(name: str, config, key: str = "generator.scheduler"):
    """A diffusers scheduler by short name, built from another scheduler's config (same noise schedule)."""
    import diffusers

    if name not in SCHEDULERS:
        raise ValueError(f"unknown sampler {name!r} ({key}); known: {sorted(SCHEDULERS)}")
    cls_name, extra = SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(config, **extra)
