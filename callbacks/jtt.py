"""JustTrainTwice: Just Train Twice (Liu et al. 2021, "Just Train Twice: Improving Group Robustness without
Training Group Information") as a thin callback.

Epochs 1..T train the identification model (ERM; `model.loss=weighted` with all weights 1). At the end of epoch T
(after its validation) the callback finds that model's training-set errors and gives them loss weight λ through
`datamodule.set_sample_weights` (per-sample loss weights, not upsampling). At the start of epoch T+1 it
re-initialises the network in place (a freshly built twin, seeded) and rebuilds the optimiser and scheduler with
`trainer.strategy.setup_optimizers`, so the second model trains from scratch for the remaining epochs
(or for `final_epochs` of its own, which extends the run as the JTT paper does). Both steps
are recorded in `state_dict`: a run resumed between them, or later, continues exactly.
"""

from __future__ import annotations

import torch
from lightning import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info

from blindspot.baselines.batched import apply_batched
from blindspot.baselines.jtt import error_set, reinitialize_, upweight as upweight_errors

from .common import gather_by_index


class JustTrainTwice(Callback):
    """Train T epochs with ERM, upweight that model's training errors by λ, restart the network, train on."""

    def __init__(self, identification_epochs: int = 2, upweight: float = 6.0, seed: int = 0, batch_size: int = 256,
                 final_epochs: int | None = None):
        if identification_epochs < 1:
            raise ValueError(f"jtt identification_epochs={identification_epochs}: must be >= 1 (T ERM epochs)")
        if not float(upweight) >= 1.0:
            raise ValueError(f"jtt upweight={upweight}: λ must be >= 1 (1 = plain ERM)")
        self.identification_epochs, self.upweight, self.seed = identification_epochs, float(upweight), seed
        if final_epochs is not None and final_epochs < 1:
            raise ValueError(f"jtt final_epochs={final_epochs}: must be >= 1, or null for what trainer.max_epochs leaves")
        self.batch_size, self.final_epochs = batch_size, final_epochs
        self.errors: list[int] | None = None  # error set of the identification model (train indices)
        self.restarted = False  # whether the second model has been started
        self.stats: dict = {}

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        if self.final_epochs is not None:  # the paper's protocol: the second model gets a schedule of its own
            total = self.identification_epochs + self.final_epochs
            if trainer.max_epochs != total:
                rank_zero_info(f"[jtt] final_epochs={self.final_epochs}: {total} epochs in all "
                               f"({self.identification_epochs} + {self.final_epochs}; trainer.max_epochs was "
                               f"{trainer.max_epochs})")
                trainer.fit_loop.max_epochs = total
        elif trainer.max_epochs is not None and trainer.max_epochs <= self.identification_epochs:
            raise ValueError(f"jtt identification_epochs={self.identification_epochs} leaves no epoch for the second "
                             f"model (trainer.max_epochs={trainer.max_epochs}): lower it or raise trainer.max_epochs")
        if getattr(pl_module.hparams, "loss", None) != "weighted" or not hasattr(pl_module, "build_net"):
            raise ValueError("JTT upweights errors through per-sample loss weights: use the ImageClassifier with "
                             "model.loss=weighted (+augment=jtt sets it)")
        if not hasattr(trainer.datamodule, "set_sample_weights"):
            raise ValueError("JTT needs a BlindspotDataModule (set_sample_weights / train_images)")

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.errors is not None or trainer.current_epoch + 1 < self.identification_epochs:
            return
        dm = trainer.datamodule
        n = len(dm.train_set)
        # every rank predicts an equal-sized shard (wrapped around), gathered and de-duplicated by index
        shard = torch.arange(trainer.global_rank, -(-n // trainer.world_size) * trainer.world_size,
                             trainer.world_size) % n
        preds = apply_batched(lambda x: pl_module.predict_proba(x).argmax(-1), dm.train_images, shard.tolist(),
                              self.batch_size)
        index, preds = gather_by_index(trainer, shard.to(pl_module.device), preds.to(pl_module.device))
        labels = torch.as_tensor(dm.train_set.labels)[index]
        errors = error_set(preds, labels)
        self.errors = index[errors].tolist()
        dm.set_sample_weights(upweight_errors(self.errors, self.upweight))
        self.stats = {"identification_epochs": self.identification_epochs, "upweight": self.upweight,
                      "error_set_size": len(self.errors), "train_size": n,
                      "identification_train_error": len(self.errors) / max(1, n)}
        rank_zero_info(f"[jtt] identification model (epoch {trainer.current_epoch + 1}): {len(self.errors)} of {n} "
                       f"training samples wrong; they get loss weight {self.upweight:g}; the second model starts next")

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.stats and not trainer.sanity_checking:  # the report reads these from trainer.callback_metrics
            pl_module.log_dict({f"jtt/{k}": float(v) for k, v in self.stats.items()})

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.errors is None or self.restarted:
            return
        reinitialize_(pl_module.net, pl_module.build_net, self.seed)
        trainer.strategy.setup_optimizers(trainer)  # fresh optimiser state and scheduler for the second model
        self.restarted = True
        self.stats["second_model_start_epoch"] = trainer.current_epoch
        rank_zero_info(f"[jtt] epoch {trainer.current_epoch + 1}: network re-initialised, optimiser and scheduler "
                       "restarted (train twice)")

    def state_dict(self) -> dict:
        return {"errors": self.errors, "restarted": self.restarted, "stats": dict(self.stats)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.errors = state_dict.get("errors")
        self.restarted = bool(state_dict.get("restarted", False))
        self.stats = dict(state_dict.get("stats", {}))
