"""A checkpoint on a crash or SIGTERM that never waits for the other ranks."""

from __future__ import annotations

from typing import Any

from lightning import Trainer
from lightning.pytorch.callbacks import OnExceptionCheckpoint


class ExceptionCheckpoint(OnExceptionCheckpoint):
    """Lightning's OnExceptionCheckpoint without its closing barrier, so an error on one rank ends a DDP run.

    `Trainer.save_checkpoint` ends in a barrier every rank must enter. When one rank raises (say in `setup`) while the
    others wait in another collective, the barrier and that collective never meet: the run hangs until the process
    group's timeout (30 min by default) and the error is easily lost (Lightning-AI/pytorch-lightning#20187). Here
    each rank dumps its state alone; under DDP only rank 0 writes the file, as `save_checkpoint` would.
    """

    def on_exception(self, trainer: Trainer, *_: Any, **__: Any) -> None:
        if trainer.world_size == 1:
            return super().on_exception(trainer)
        checkpoint = trainer._checkpoint_connector.dump_checkpoint()  # no collective under DDP
        trainer.strategy.save_checkpoint(checkpoint, self.ckpt_path)
