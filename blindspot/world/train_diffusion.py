"""Train the world's text-to-image diffusion model on the world corpus (CPU, resumable).

A diffusers UNet2DConditionModel denoises 16x16x12 space-to-depth images (v-prediction, min-SNR
weighting, EMA), conditioned on the frozen world-CLIP text tower, sampled with SDE-DPM-Solver++, and is shipped as a stock
`StableDiffusionPipeline` folder that `AutoPipelineForText2Image.from_pretrained` loads.

    python -m blindspot.world.train_diffusion            # defaults in conf/world/train_diffusion.yaml
"""

from __future__ import annotations

import copy
import json
import logging
import tempfile
import time
from pathlib import Path

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from ..clip import load_clip
from .corpus import corpus_batch
from .pixel_vae import PixelUnshuffleAutoencoder
from .spec import WorldSpec, caption
from .text_encoder import clip_tokenizer, open_clip_text_to_transformers
from .training import Stopwatch, atomic_torch_save, cosine_lr, load_state, write_provenance

log = logging.getLogger(__name__)


def corpus_seed(seed: int, step: int) -> int:
    """The corpus batch seed of one step (disjoint from CLIP's and from the task data's seeds)."""
    return 50_000_000 + 1_000_000 * seed + step


def build_components(cfg: DictConfig):
    """The frozen text encoder + tokenizer (from the world CLIP), the pixel VAE, a fresh UNet, the schedulers."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler, UNet2DConditionModel

    clip = load_clip(cfg.clip_model, pretrained=cfg.clip_checkpoint, config_key="clip_checkpoint")
    text_encoder = open_clip_text_to_transformers(clip.model).requires_grad_(False)
    tokenizer = clip_tokenizer(text_encoder.config.max_position_embeddings, Path(tempfile.mkdtemp()))
    vae = PixelUnshuffleAutoencoder(factor=2, scaling_factor=cfg.scaling_factor, sample_size=cfg.image_size)
    unet = UNet2DConditionModel(**OmegaConf.to_container(cfg.unet, resolve=True))
    schedule = dict(num_train_timesteps=1000, beta_schedule=cfg.beta_schedule, prediction_type=cfg.prediction_type,
                    steps_offset=1)
    train_scheduler = DDPMScheduler(**schedule)
    sample_scheduler = DPMSolverMultistepScheduler(**schedule, algorithm_type="sde-dpmsolver++", solver_order=2)
    return text_encoder, tokenizer, vae, unet, train_scheduler, sample_scheduler


def make_pipeline(text_encoder, tokenizer, vae, unet, scheduler):
    """Assemble a stock diffusers StableDiffusionPipeline from the world components."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def sample_grid(pipe, spec: WorldSpec, path: Path, steps: int, guidance: float, per_cell: int = 2) -> None:
    """Save one row per class, one column per background (per_cell samples each) as a PNG."""
    from torchvision.utils import make_grid, save_image

    prompts = [caption(c, b) for c in spec.classes for b in spec.backgrounds for _ in range(per_cell)]
    g = torch.Generator().manual_seed(0)
    images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, generator=g,
                  output_type="pt", height=spec.image_size, width=spec.image_size).images
    grid = make_grid(images, nrow=len(spec.backgrounds) * per_cell, padding=1)
    save_image(F.interpolate(grid[None], scale_factor=3, mode="nearest")[0], path)


def warm_start(unet, folder: Path) -> None:
    """Copy the weights a pipeline folder's UNet shares with this one (new layers keep their fresh init)."""
    from diffusers import UNet2DConditionModel

    if not (folder / "unet").is_dir():
        raise FileNotFoundError(f"init_from={folder}: expected a diffusers pipeline folder with a unet/ inside")
    source = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()
    missing, unexpected = unet.load_state_dict(source, strict=False)
    if unexpected:
        raise ValueError(f"init_from={folder}: its UNet has weights this config lacks: {unexpected[:5]}")
    added = getattr(unet, "add_embedding", None)
    if any(k.startswith("add_embedding.norm2.") for k in missing):  # a new pathway starts silent: the warm model
        torch.nn.init.zeros_(added.norm2.weight)                    # is unchanged at step 0
        torch.nn.init.zeros_(added.norm2.bias)
    log.info("warm start from %s; freshly initialised: %s", folder, sorted({k.split('.')[0] for k in missing}))


def previous_stages(cfg: DictConfig) -> list[dict]:
    """The training record of the pipeline this run starts from (init_from), read before anything overwrites it."""
    previous = Path(cfg.init_from or "") / "training.json"
    return [json.loads(previous.read_text())] if cfg.init_from and previous.is_file() else []


def encode_prompts(text_encoder, tokenizer, prompts: list[str]) -> torch.Tensor:
    """Last hidden states of the text encoder, as Stable Diffusion conditions on them."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return text_encoder(ids)[0]


def train(cfg: DictConfig) -> dict:
    """Run (or resume) diffusion training and export the pipeline."""
    from diffusers.training_utils import EMAModel

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = WorldSpec(image_size=cfg.image_size)
    text_encoder, tokenizer, vae, unet, scheduler, sampler = build_components(cfg)
    work, step, history = Path(cfg.work_dir), 0, []
    work.mkdir(parents=True, exist_ok=True)
    state = load_state(work / "state.pt")
    if cfg.init_from and not state:
        warm_start(unet, Path(cfg.init_from))
    # the record of earlier stages lives in the state, so a finished stage re-exported in place does not chain itself
    stages = state.get("previous_stages", []) if state else previous_stages(cfg)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=0.75)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if state:
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["optimizer"])
        ema.load_state_dict(state["ema"])
        step, history = state["step"], state["history"]
        log.info("resuming diffusion training at step %d", step)
    watch = Stopwatch(state["seconds"], state.get("cpu_seconds", 0.0)) if state else Stopwatch()
    last_save = time.monotonic()
    alphas = scheduler.alphas_cumprod
    n_params = sum(p.numel() for p in unet.parameters())
    log.info("UNet: %.2fM parameters; scaling_factor %.3f", n_params / 1e6, cfg.scaling_factor)

    def ema_pipeline():
        ema_unet = copy.deepcopy(unet)
        ema.copy_to(ema_unet.parameters())
        return make_pipeline(text_encoder, tokenizer, vae, ema_unet.eval(), sampler)

    def save():
        atomic_torch_save({"unet": unet.state_dict(), "optimizer": opt.state_dict(), "ema": ema.state_dict(),
                           "step": step, "history": history, "seconds": watch.seconds, "cpu_seconds": watch.cpu_seconds,
                           "previous_stages": stages}, work / "state.pt")

    if cfg.export_only:  # write the pipeline from the saved state (e.g. to try a half-trained model)
        ema_pipeline().save_pretrained(Path(cfg.out_dir), safe_serialization=True)
        log.info("exported the EMA weights of step %d to %s", step, cfg.out_dir)
        return {"step": step}
    bar = tqdm(total=cfg.steps, initial=step, desc="world diffusion", dynamic_ncols=True)
    running = None
    while step < cfg.steps:
        batch = corpus_batch(spec, cfg.batch_size, corpus_seed(cfg.seed, step), cfg.caption_drop_prob)
        g = torch.Generator().manual_seed(corpus_seed(cfg.seed, step))
        prompts = [c if u >= cfg.uncond_prob else "" for c, u in
                   zip(batch.captions, torch.rand(cfg.batch_size, generator=g).tolist())]
        cond = encode_prompts(text_encoder, tokenizer, prompts)
        x = batch.images.float() / 127.5 - 1.0
        z = vae.encode(x).latent_dist.sample() * cfg.scaling_factor
        noise = torch.randn(z.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        noisy = scheduler.add_noise(z, noise, t)
        target = scheduler.get_velocity(z, noise, t) if cfg.prediction_type == "v_prediction" else noise
        snr = alphas[t] / (1 - alphas[t])
        weight = torch.clamp(snr, max=cfg.min_snr_gamma) / (snr + 1 if cfg.prediction_type == "v_prediction" else snr)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup, floor=cfg.lr * cfg.final_lr_fraction)
        pred = unet(noisy, t, cond).sample
        loss = (weight * F.mse_loss(pred, target, reduction="none").mean(dim=(1, 2, 3))).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        ema.step(unet.parameters())
        step += 1
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}")
        if step % cfg.sample_every == 0 or step == cfg.steps:
            history.append({"step": step, "loss": running, "minutes": watch.seconds / 60})
            sample_grid(ema_pipeline(), spec, work / f"samples_{step:06d}.png", cfg.sample_steps, cfg.guidance)
            log.info("step %d: %s", step, json.dumps(history[-1]))
        if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes or step == cfg.steps:
            save()
            last_save = time.monotonic()
    bar.close()
    out = Path(cfg.out_dir)
    pipe = ema_pipeline()
    pipe.text_encoder.to(torch.float16)  # the largest part is the 49k-token embedding table: ship it in fp16
    pipe.save_pretrained(out, safe_serialization=True)
    earlier = sum(st.get("total_wall_minutes", st.get("wall_minutes", 0)) for st in stages)  # all earlier stages
    write_provenance(out, steps=cfg.steps, batch_size=cfg.batch_size, unet_parameters=n_params, previous_stages=stages,
                     total_wall_minutes=round(watch.seconds / 60 + earlier, 2),
                     wall_minutes=round(watch.seconds / 60, 2), cpu_minutes=round(watch.cpu_seconds / 60, 2),
                     history=history,
                     config=OmegaConf.to_container(cfg, resolve=True))
    log.info("exported %s after %.1f min", out, watch.seconds / 60)
    return history[-1] if history else {}


@hydra.main(version_base="1.3", config_path="../../conf/world", config_name="train_diffusion")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    train(cfg)


if __name__ == "__main__":
    main()
