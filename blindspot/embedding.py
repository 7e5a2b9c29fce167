"""CLIP embeddings of a fixed image set, computed once and cached on disk by (model, dataset) fingerprint."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Callable

import torch
from tqdm import tqdm

from .clip import ClipModel

log = logging.getLogger(__name__)


def cache_key(model_fingerprint: str, dataset_fingerprint: str) -> str:
    """File-name-safe key for one (model, dataset) pair."""
    return hashlib.sha256(f"{model_fingerprint}|{dataset_fingerprint}".encode()).hexdigest()[:20]


def embed_dataset(
    clip: ClipModel,
    n: int,
    get_images: Callable[[list[int]], torch.Tensor],
    dataset_fingerprint: str,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 256,
    progress: bool = True,
) -> torch.Tensor:
    """[n, d] normalised image embeddings; read from the cache when this model already embedded this data."""
    path = Path(cache_dir) / f"clip-{cache_key(clip.fingerprint, dataset_fingerprint)}.pt" if cache_dir else None
    if path is not None and path.is_file():
        emb = torch.load(path, weights_only=True)
        if len(emb) == n:
            log.info("CLIP embeddings: %d from cache %s", n, path.name)
            return emb
        log.warning("embedding cache %s has %d rows, expected %d: recomputing", path, len(emb), n)
    chunks = []
    for start in tqdm(range(0, n, batch_size), desc="CLIP embeddings", disable=not progress, leave=False):
        idx = list(range(start, min(n, start + batch_size)))
        chunks.append(clip.encode_images(get_images(idx), batch_size=batch_size))
    emb = torch.cat(chunks) if chunks else torch.zeros(0, clip.embed_dim)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        torch.save(emb, tmp)
        os.replace(tmp, path)
    return emb
