"""A checkpoint on a crash or SIGTERM that never waits for the other ranks."""

from __future__ import annotations

import os
from typing import Any

from lightning import Trainer
from lightning.pytorch.callbacks import Checkpoint


class ExceptionCheckpoint(Checkpoint):
    """Lightning's OnExceptionCheckpoint, without its closing barrier and without its implicit resume.

    Barrier: `Trainer.save_checkpoint` ends in a barrier every rank must enter. When one rank raises (say in `setup`)
    while the others wait in another collective, the barrier and that collective never meet: the run hangs until the
    process group's timeout (30 min by default) and the error is easily lost (Lightning-AI/pytorch-lightning#20187).
    Here each rank dumps its state alone; under DDP only rank 0 writes the file, as `save_checkpoint` would.

    Resume: with an `OnExceptionCheckpoint` among the callbacks, Lightning turns `fit(ckpt_path=None)` into
    `ckpt_path="last"` and silently continues from the newest checkpoint in the folder (last.ckpt or a crash's
    on_exception.ckpt). Runs here continue only when asked (`resume=<run dir>`), so this class is not one.
    """

    FILE_EXTENSION = ".ckpt"

    def __init__(self, dirpath: str | os.PathLike, filename: str = "on_exception") -> None:
        if not filename:
            raise ValueError("on_exception.filename cannot be empty")
        super().__init__()
        self.dirpath, self.filename = dirpath, filename

    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.dirpath, self.filename + self.FILE_EXTENSION)

    def on_exception(self, trainer: Trainer, *_: Any, **__: Any) -> None:
        if trainer.world_size == 1:
            return trainer.save_checkpoint(self.ckpt_path)
        checkpoint = trainer._checkpoint_connector.dump_checkpoint()  # no collective under DDP
        trainer.strategy.save_checkpoint(checkpoint, self.ckpt_path)

    def teardown(self, trainer: Trainer, *_: Any, **__: Any) -> None:
        trainer.strategy.remove_checkpoint(self.ckpt_path)  # a run that ended normally keeps no crash checkpoint
