"""Checkpoints kept beside the rolling one (e.g. the epochs the suite starts other methods from)."""

from __future__ import annotations

from lightning.pytorch.callbacks import ModelCheckpoint


class KeepCheckpoints(ModelCheckpoint):
    """A ModelCheckpoint keyed by its file name, so it can sit beside another one with the same schedule.

    Lightning keys a ModelCheckpoint's saved state by monitor, mode and schedule: a second monitor-free checkpoint
    saving every epoch would clash with `model_checkpoint`'s key, and the Trainer refuses two equal keys.
    """

    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename)
