"""Train the world's CLIP with open_clip's contrastive loss on the world corpus (CPU, resumable).

    python -m blindspot.world.train_clip               # defaults in conf/world/train_clip.yaml
    python -m blindspot.world.train_clip steps=200     # any key can be overridden
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from ..clip import load_clip
from .evaluate import clip_quality
from .corpus import corpus_batch
from .spec import WorldSpec
from .training import Stopwatch, atomic_torch_save, cosine_lr, load_state, write_provenance

log = logging.getLogger(__name__)


def corpus_seed(seed: int, step: int) -> int:
    """The corpus batch seed of one step (disjoint from the task data's small seeds)."""
    return 10_000_000 + 1_000_000 * seed + step


def export(model: torch.nn.Module, out_dir: Path) -> Path:
    """Write the shipped fp16 safetensors checkpoint that open_clip loads with `pretrained=<path>`."""
    from safetensors.torch import save_file

    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "open_clip_model.safetensors"
    state = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    save_file(state, str(tmp))
    tmp.replace(path)
    return path


def train(cfg: DictConfig) -> dict:
    """Run (or resume) CLIP training and export the checkpoint; returns the final metrics."""
    import open_clip

    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    spec = WorldSpec()
    clip = load_clip(cfg.model, pretrained=None)
    model = clip.model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6,
    )
    loss_fn = open_clip.ClipLoss()
    work = Path(cfg.work_dir)
    state = load_state(work / "state.pt")
    step, history = 0, []
    if state:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, history = state["step"], state["history"]
        log.info("resuming CLIP training at step %d", step)
    watch = Stopwatch(state["seconds"] if state else 0.0)
    last_save = time.monotonic()

    def save():
        atomic_torch_save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step,
                           "history": history, "seconds": watch.seconds}, work / "state.pt")

    bar = tqdm(total=cfg.steps, initial=step, desc="world CLIP", dynamic_ncols=True)
    while step < cfg.steps:
        batch = corpus_batch(spec, cfg.batch_size, corpus_seed(cfg.seed, step), cfg.caption_drop_prob)
        images = clip.preprocess(batch.images)
        tokens = clip.tokenizer(batch.captions)
        for group in opt.param_groups:
            group["lr"] = cosine_lr(step, cfg.steps, cfg.lr, cfg.warmup)
        image_features, text_features, logit_scale = model(images, tokens)[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, 4.6052)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if step % cfg.eval_every == 0 or step == cfg.steps:
            model.eval()
            metrics = clip_quality(clip, spec, n=cfg.eval_images)
            model.train()
            history.append({"step": step, "loss": loss.item(), "minutes": watch.seconds / 60, **metrics})
            log.info("step %d: %s", step, json.dumps(history[-1]))
        if time.monotonic() - last_save > 60 * cfg.checkpoint_minutes or step == cfg.steps:
            save()
            last_save = time.monotonic()
    bar.close()
    path = export(model, Path(cfg.out_dir))
    final = history[-1] if history else {}
    write_provenance(Path(cfg.out_dir), model=cfg.model, steps=cfg.steps, batch_size=cfg.batch_size,
                     wall_minutes=round(watch.seconds / 60, 2), checkpoint=path.name, metrics=final,
                     history=history)
    log.info("exported %s after %.1f min", path, watch.seconds / 60)
    return final


@hydra.main(version_base="1.3", config_path="../../conf/world", config_name="train_clip")
def main(cfg: DictConfig) -> None:
    """Hydra entry point."""
    train(cfg)


if __name__ == "__main__":
    main()
