"""PoolRetrieval: targeted collection of real data (Singla et al. 2022, "Data-Centric Debugging: mitigating model
failures via targeted data collection") as a thin callback.

After each discovery round (FailureDiscovery's `pending`), the datamodule's weakly labelled pool is embedded with
CLIP (cached by its fingerprint), `images_per_round` pool images nearest to the modes' members are chosen
(`blindspot.baselines.retrieval.select_for_modes`), written as PNG files under `output_dir` (so they work like
generated samples), and injected with the mode's class label through `datamodule.add_samples`. Pool images already
taken (checkpointed in `state_dict`) are never taken again.
"""

from __future__ import annotations

from pathlib import Path

from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from blindspot.baselines.retrieval import select_for_modes
from blindspot.embedding import embed_dataset
from blindspot.images import save_png

from .discovery import require_discovery, take_pending_round


class PoolRetrieval(Callback):
    """Add the pool images nearest (CLIP cosine) to each failure mode's members, with the mode's class label."""

    def __init__(self, output_dir: str = "retrieved", images_per_round: int = 512, match_label: bool = True,
                 cache_dir: str | None = None, progress: bool = True):
        if images_per_round < 1:
            raise ValueError(f"retrieval images_per_round={images_per_round}: the budget must be >= 1 "
                             "(use +augment=none to train without added images)")
        self.output_dir, self.images_per_round, self.match_label = Path(output_dir), images_per_round, match_label
        self.cache_dir, self.progress = cache_dir, progress
        self.taken: list[int] = []  # pool indices already added (checkpointed)
        self.stats: dict[int, dict] = {}  # round index -> what was retrieved

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        require_discovery(trainer, "PoolRetrieval", "retrieval")
        if trainer.datamodule.pool_split() is None:
            raise ValueError(f"retrieval needs a weakly labelled pool of candidate images, and "
                             f"{type(trainer.datamodule).__name__} has none: use the built-in world (data=world, "
                             "its pool is data.pool_per_class images per class) or a datamodule whose pool_split() "
                             "returns one")

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        discovery, rnd = take_pending_round(trainer)
        if rnd is None:
            return
        dm = trainer.datamodule
        records = None
        if trainer.is_global_zero:  # choose and write once; every rank injects the same records
            pool = dm.pool_split()
            pool_emb = embed_dataset(discovery.clip, len(pool.labels), lambda idx: pool.images[idx], pool.fingerprint,
                                     self.cache_dir, progress=self.progress)
            picks = select_for_modes(rnd.modes, discovery.embeddings(trainer), pool_emb, pool.labels,
                                     self.images_per_round, self.taken, self.match_label)
            folder = self.output_dir / f"round_{rnd.index}"
            folder.mkdir(parents=True, exist_ok=True)
            records = []
            for p in picks:
                path = folder / f"pool_{p.pool_index:07d}.png"
                save_png(pool.images[p.pool_index], path)
                records.append({"path": str(path), "label": p.label, "source": "retrieval", "round": rnd.index,
                                "mode_id": p.mode_id, "pool_index": p.pool_index, "similarity": p.similarity,
                                "pool_label": int(pool.labels[p.pool_index])})
        records = trainer.strategy.broadcast(records, src=0)
        trainer.strategy.barrier("blindspot-retrieval")  # files are written before any rank reads them
        added = dm.add_samples(records)
        self.taken += [r["pool_index"] for r in records]
        per_mode: dict[str, int] = {}
        for r in records:
            per_mode[r["mode_id"]] = per_mode.get(r["mode_id"], 0) + 1
        self.stats[rnd.index] = {"retrieved": len(records), "added": added, "per_mode": per_mode,
                                 "label_agreement": sum(r["pool_label"] == r["label"] for r in records)
                                 / max(1, len(records))}
        rank_zero_info(f"[blindspot] round {rnd.index}: retrieved {len(records)} pool images for {len(rnd.modes)} "
                       f"modes; training continues on {len(dm.synthetic)} added samples")

    def report_extra(self) -> dict:
        """Retrieved images per round, for the report."""
        return {"retrieval": {str(k): v for k, v in self.stats.items()}} if self.stats else {}

    def state_dict(self) -> dict:
        return {"taken": list(self.taken), "stats": {str(k): v for k, v in self.stats.items()}}

    def load_state_dict(self, state_dict: dict) -> None:
        self.taken = [int(i) for i in state_dict.get("taken", [])]
        self.stats = {int(k): v for k, v in state_dict.get("stats", {}).items()}
