"""Blindspot's entry point: compose the config, train, test, return the metric a sweep optimises.

    python train.py                                   # ERM on the built-in world
    python train.py +augment=failure_diffusion        # find blind spots, generate, inject, keep training
    python train.py -m +augment=none,jtt,failure_diffusion seed=0,1,2
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig

from blindspot.runtime import (describe_rank_exits, enable_crash_tracebacks, is_ddp_child, last_checkpoint,
                               register_resolvers, rewrite_argv_for_ddp_child)

log = logging.getLogger("train")
enable_crash_tracebacks()  # a rank that dies in native code says where, instead of vanishing
rewrite_argv_for_ddp_child()  # DDP ranks > 0 must run rank 0's job in rank 0's folder
register_resolvers()


def instantiate_all(group: DictConfig | None, **shared) -> list:
    """Instantiate every entry of a config group that has a `_target_` (callbacks, loggers); an entry that
    declares a key of `shared` (e.g. `loop: null`) gets that shared object."""
    return [hydra.utils.instantiate(c, **{k: v for k, v in shared.items() if k in c})
            for c in (group or {}).values() if isinstance(c, DictConfig) and "_target_" in c]


def refuse_to_overwrite(output_dir: str) -> None:
    """A fit from scratch must not write over a run that has epochs in this folder (it continues only if asked)."""
    last = last_checkpoint(output_dir)
    if (last.exists() or last.is_symlink()) and not is_ddp_child():  # last.ckpt links to the newest epoch
        raise FileExistsError(f"{output_dir} already holds a run ({last}): continue it with resume={output_dir}, "
                              "or start a new one in another folder (hydra.run.dir)")


def resume_checkpoint(run_dir: str | None) -> str | None:
    """The checkpoint to continue a run dir from; None starts it again in place (its generated images are reused)."""
    if not run_dir:
        return None
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"resume={run_dir!r} is not a run directory (resume takes a run's output folder)")
    last = last_checkpoint(run_dir)
    if last.is_file():
        return str(last)
    log.warning("resume: %s has no checkpoint yet (stopped during its first epoch); starting it again in place "
                "(from ckpt_path, if set), reusing the generated images and manifests already there", run_dir)
    return None


@contextmanager
def naming_failed_ranks(trainer) -> Iterator[None]:
    """On rank 0 of a failing DDP run, log how every other rank ended (gloo's own error only says one closed)."""
    try:
        yield
    except BaseException:
        children = getattr(trainer.strategy.launcher, "procs", None)
        if children and trainer.global_rank == 0:
            log.error("the run failed; the other DDP ranks on this node: %s",
                      "; ".join(describe_rank_exits(children)))
        raise


def build(cfg: DictConfig) -> tuple:
    """The run's datamodule, model, callbacks and loggers; the failure loop (if any) is shared by the callbacks."""
    datamodule = hydra.utils.instantiate(cfg.data, _convert_="all")
    model = hydra.utils.instantiate(cfg.model, num_classes=datamodule.num_classes, class_names=datamodule.class_names,
                                    group_names=datamodule.group_names, _convert_="all")  # plain types: safe ckpts
    loop = hydra.utils.instantiate(cfg.loop, _convert_="all") if cfg.get("loop") else None  # the one failure loop
    return datamodule, model, instantiate_all(cfg.get("callbacks"), loop=loop), instantiate_all(cfg.get("logger"))


def run(cfg: DictConfig) -> float | None:
    """Train and test one configuration; returns cfg.optimized_metric (None if it was never logged)."""
    import lightning as L
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from blindspot.runtime import export_job

    if cfg.train and not cfg.resume and not cfg.ckpt_path:
        refuse_to_overwrite(cfg.paths.output_dir)
    if HydraConfig.initialized():
        export_job(cfg.paths.output_dir, list(HydraConfig.get().overrides.task))
    L.seed_everything(cfg.seed, workers=True)
    datamodule, model, callbacks, loggers = build(cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in trainer.loggers:
        logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = resume_checkpoint(cfg.resume) or cfg.ckpt_path  # a resumed run continues from its own last epoch
    with naming_failed_ranks(trainer):
        if cfg.train:
            trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
        value = trainer.callback_metrics.get(cfg.optimized_metric)  # read before test() resets the metrics
        if cfg.test:
            trainer.test(model, datamodule=datamodule, ckpt_path=None if cfg.train else ckpt_path)
    value = trainer.callback_metrics.get(cfg.optimized_metric, value)
    for logger in trainer.loggers:
        logger.finalize("success")
    if value is None:
        log.warning("optimized_metric %r was never logged; known: %s", cfg.optimized_metric,
                    sorted(trainer.callback_metrics))
        return None
    log.info("%s = %.4f", cfg.optimized_metric, float(value))
    return float(value)


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    """Hydra entry point."""
    return run(cfg)


if __name__ == "__main__":
    main()
