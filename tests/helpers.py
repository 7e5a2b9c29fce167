"""Test-only callbacks and small utilities shared by the tests."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

from lightning import Callback

TINY_WORLD = [
    "data.train_per_class=60", "data.val_per_group=2", "data.test_per_group=2", "data.batch_size=32",
    "trainer.max_epochs=1", "logger=csv",
]


class RecordSeenSamples(Callback):
    """Writes, per rank, the train indices it trained on and its validation predictions (JSON)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)
        self.train, self.val = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.train += batch["index"].tolist()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        self.val += list(zip(batch["index"].tolist(), outputs["preds"].tolist(), batch["label"].tolist()))

    def on_fit_end(self, trainer, pl_module):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        rank = trainer.global_rank
        (self.output_dir / f"seen_rank{rank}.json").write_text(json.dumps(
            {"train": self.train, "val": self.val, "pid": os.getpid(), "world_size": trainer.world_size}))


def pool_of(checkpoint_path) -> list[tuple[str, int]]:
    """(file name, label) of every injected sample stored in a checkpoint."""
    import torch

    ckpt = torch.load(checkpoint_path, weights_only=False)
    return sorted((Path(r["path"]).name, int(r["label"])) for r in ckpt["WorldDataModule"]["synthetic"])


class DumpPool(Callback):
    """Writes, per rank, the injected pool the datamodule trains on at the end of fit (JSON)."""

    def __init__(self, output_dir: str):
        self.output_dir = Path(output_dir)

    def on_fit_end(self, trainer, pl_module):
        self.output_dir.mkdir(parents=True, exist_ok=True)
        pool = [(Path(r["path"]).name, int(r["label"])) for r in trainer.datamodule.synthetic]
        (self.output_dir / f"pool_rank{trainer.global_rank}.json").write_text(json.dumps(sorted(pool)))


def failing_backend(fail_rank: int, **kwargs):
    """A real diffusers backend that raises on one DDP rank (to test that every rank stops, none hangs)."""
    from blindspot.generation.backends import DiffusersText2Image

    class FailingOnRank(DiffusersText2Image):
        def generate(self, prompts, seeds):
            if int(os.environ.get("LOCAL_RANK", "0")) == fail_rank:
                raise RuntimeError(f"simulated generator crash on rank {fail_rank}")
            return super().generate(prompts, seeds)

    return FailingOnRank(**kwargs)


class BagOfWords:
    """A transparent text encoder: the normalised sum of fixed random word vectors (seeded by the word itself)."""

    def __init__(self, dim: int = 32):
        self.dim, self.words = dim, {}

    def __call__(self, texts):
        import torch
        import torch.nn.functional as F

        out = []
        for t in texts:
            for w in t.lower().split():
                if w not in self.words:  # the seed depends on the word only, not on which test met it first
                    seed = torch.Generator().manual_seed(zlib.crc32(w.encode()))
                    self.words[w] = torch.randn(self.dim, generator=seed)
            out.append(F.normalize(torch.stack([self.words[w] for w in t.lower().split()]).sum(0), dim=-1))
        return torch.stack(out)


class FailInSetup(Callback):
    """Raises in `setup` on one DDP rank only (to test that a one-rank setup error stops every rank, none hangs)."""

    def __init__(self, fail_rank: int = 1):
        self.fail_rank = fail_rank

    def setup(self, trainer, pl_module, stage):
        if trainer.global_rank == self.fail_rank:
            raise RuntimeError(f"simulated setup failure on rank {self.fail_rank}")
