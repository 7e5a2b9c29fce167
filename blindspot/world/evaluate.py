"""Quality measures of the world's CLIP on held-out world images (zero-shot accuracy, retrieval)."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F

from ..clip import ClipModel
from .corpus import corpus_batch
from .spec import CAPTION_TEMPLATES, WorldSpec, caption

EVAL_SEED = 987_654_321  # held-out corpus seed, never used for training


def _prototypes(clip: ClipModel, groups: list[list[str]]) -> torch.Tensor:
    """One normalised text embedding per group of prompts (prompt ensembling)."""
    flat = [p for g in groups for p in g]
    emb = clip.encode_texts(flat)
    out, i = [], 0
    for g in groups:
        out.append(F.normalize(emb[i : i + len(g)].mean(0), dim=-1))
        i += len(g)
    return torch.stack(out)


@torch.no_grad()
def clip_quality(clip: ClipModel, spec: WorldSpec, n: int = 2000, seed: int = EVAL_SEED) -> dict[str, float]:
    """Zero-shot class/background/colour accuracy and image->caption recall@1 on held-out renders."""
    batch = corpus_batch(spec, n, seed)
    img = clip.encode_images(batch.images)
    class_protos = _prototypes(clip, [[caption(c, template=t) for t in CAPTION_TEMPLATES] for c in spec.classes])
    bg_protos = _prototypes(clip, [[caption(c, background=b) for c in spec.classes] for b in spec.backgrounds])
    color_protos = _prototypes(clip, [[caption(c, color=k) for c in spec.classes] for k in spec.colors])
    combos = list(itertools.product(range(len(spec.classes)), range(len(spec.backgrounds)), range(len(spec.colors))))
    full = clip.encode_texts([caption(spec.classes[c], spec.backgrounds[b], spec.colors[k]) for c, b, k in combos])
    top = torch.tensor(combos)[(img @ full.T).argmax(1)]
    hit = (top[:, 0] == batch.classes) & (top[:, 1] == batch.backgrounds) & (top[:, 2] == batch.colors)
    return {
        "clip_class_acc": ((img @ class_protos.T).argmax(1) == batch.classes).float().mean().item(),
        "clip_background_acc": ((img @ bg_protos.T).argmax(1) == batch.backgrounds).float().mean().item(),
        "clip_color_acc": ((img @ color_protos.T).argmax(1) == batch.colors).float().mean().item(),
        "clip_retrieval_r1": hit.float().mean().item(),
    }
