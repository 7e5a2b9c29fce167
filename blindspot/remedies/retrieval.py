"""Pool retrieval as a remedy: targeted collection of real data (Singla et al. 2022, "Data-Centric Debugging:
mitigating model failures via targeted data collection").

For each mode, the images of a weakly labelled pool nearest in CLIP space to the mode's members are written as
PNG files and injected with the mode's class label (`blindspot.baselines.retrieval.select_for_modes`). Pool
images already taken (in `state_dict`) are never taken again.
"""

from __future__ import annotations

from pathlib import Path

from ..baselines.retrieval import select_for_modes
from ..images import save_png
from .base import RemedyContext, RemedyResult, check_writable


class RetrievalRemedy:
    """Add the pool images nearest to each failure mode's members, labelled with the mode's class."""

    name = "retrieval"

    def __init__(self, output_dir: str = "retrieved", images_per_round: int = 256, match_label: bool = True):
        if images_per_round < 1:
            raise ValueError(f"remedy.images_per_round={images_per_round}: the retrieval budget must be >= 1 "
                             "(use +augment=none to train without added images)")
        self.output_dir, self.images_per_round, self.match_label = Path(output_dir), images_per_round, match_label
        self.taken: list[int] = []  # pool indices already added

    def prepare(self, context: RemedyContext) -> None:
        """Before training: a pool exists and the output folder is writable."""
        if context.pool() is None:
            raise ValueError("remedy=retrieval needs a weakly labelled pool of candidate images and this datamodule "
                             "has none: use the built-in world (data=world; its pool is data.pool_per_class images "
                             "per class) or a datamodule whose pool_split() returns one")
        check_writable(self.output_dir, "remedy.output_dir")

    def __call__(self, rnd, context: RemedyContext) -> RemedyResult:
        """Choose and write the round's pool images on rank 0; every rank gets the same records."""
        records = None
        if context.is_main:
            pool, pool_labels = context.pool()
            pool_emb = context.embed(pool)
            picks = select_for_modes(rnd.modes, context.val_embeddings, pool_emb, pool_labels,
                                     self.images_per_round, self.taken, self.match_label)
            folder = self.output_dir / f"round_{rnd.index}"
            folder.mkdir(parents=True, exist_ok=True)
            records = []
            for p in picks:
                path = folder / f"pool_{p.pool_index:07d}.png"
                save_png(pool.images([p.pool_index])[0], path)
                records.append({"path": str(path), "label": p.label, "source": "retrieval", "round": rnd.index,
                                "mode_id": p.mode_id, "pool_index": p.pool_index, "similarity": p.similarity,
                                "pool_label": int(pool_labels[p.pool_index])})
        records = context.broadcast(records)
        context.barrier("blindspot-retrieval")  # files are written before any rank reads them
        self.taken += [r["pool_index"] for r in records]
        per_mode: dict[str, dict] = {}
        for r in records:
            per_mode.setdefault(r["mode_id"], {"kept": 0})["kept"] += 1
        stats = {"generated": 0, "kept": len(records), "injected": len(records), "retrieved": len(records),
                 "per_mode": per_mode,
                 "label_agreement": sum(r["pool_label"] == r["label"] for r in records) / max(1, len(records))}
        return RemedyResult(records=records, stats=stats)

    def state_dict(self) -> dict:
        """Pool indices already taken."""
        return {"taken": list(self.taken)}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict()`."""
        self.taken = [int(i) for i in state.get("taken", [])]
