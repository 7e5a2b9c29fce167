"""A timm-backbone image classifier with ERM / weighted / group-DRO losses and per-group metrics."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import sys
from dataclasses import replace
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from lightning import LightningModule
from torchmetrics.classification import MulticlassAccuracy

from blindspot.images import Preprocessing, as_tuple, check_interpolation, to_uint8
from blindspot.metrics import GroupAccuracy, worst_group

from .backbones import BackboneWeightsError, create_backbone, small_image_stem

log = logging.getLogger(__name__)

LOSSES = ("erm", "weighted", "group_dro")
DRO_GROUPS = ("ground_truth", "discovered")
# backbone_kwargs that regularise and leave the architecture (and so the fit of pretrained weights) unchanged
WEIGHT_SAFE_KWARGS = frozenset({"drop_rate", "drop_path_rate", "drop_block_rate", "proj_drop_rate", "attn_drop_rate",
                                "pos_drop_rate", "patch_drop_rate", "global_pool", "img_size", "dynamic_img_size"})


class BackboneWeightsMismatchError(ValueError):
    """A weights file does not fit the timm architecture it is loaded into."""


class ImageClassifier(LightningModule):
    """Classifies uint8 images; logs accuracy, per-class, per-group and worst-group accuracy per split."""

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        optimizer: Callable,
        scheduler: Callable | None = None,
        class_names: Sequence[str] = (),
        group_names: Sequence[str] = (),
        pretrained: bool = False,
        pretrained_path: str | None = None,
        backbone_kwargs: dict | None = None,
        loss: str = "erm",
        dro_step_size: float = 0.01,
        dro_groups: str = "ground_truth",
        mean: Sequence[float] | None = (0.5, 0.5, 0.5),
        std: Sequence[float] | None = (0.25, 0.25, 0.25),
        image_size: int | None = None,
        interpolation: str | None = None,
        label_smoothing: float = 0.0,
        stem_stride: int | None = None,
        channels_last: bool = False,
        scheduler_interval: str = "epoch",
    ):
        super().__init__()
        if loss not in LOSSES:
            raise ValueError(f"unknown loss {loss!r}; choose one of {LOSSES} (model.loss)")
        if dro_groups not in DRO_GROUPS:
            raise ValueError(f"unknown model.dro_groups {dro_groups!r}; choose one of {DRO_GROUPS}")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"model.scheduler_interval must be 'epoch' or 'step', not {scheduler_interval!r}")
        if loss == "group_dro" and dro_groups == "ground_truth" and not group_names:
            raise ValueError("model.loss=group_dro needs ground-truth groups and this data has none: use data with "
                             "group labels, or groups from discovery (+augment=group_dro_discovered)")
        if interpolation is not None:
            check_interpolation(interpolation, "model.interpolation")
        check_pretrained_architecture(backbone, pretrained, pretrained_path, backbone_kwargs, stem_stride)
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.net = self.build_net()
        self.preprocessing = resolve_preprocessing(self.net, mean, std, image_size, interpolation,
                                                   loads_weights=bool(pretrained or pretrained_path))
        # the train loader's (side, filter) once known (setup / use_loader_size / checkpoint); before that, outside
        # images are resized only to a side the config or the pretrained weights ask for
        self.loader_size: tuple[int, str] | None = None
        self._resize_unattached = bool(image_size or pretrained or pretrained_path)
        self.register_buffer("mean", torch.tensor(self.preprocessing.mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.preprocessing.std).view(1, -1, 1, 1), persistent=False)
        self.class_names, self.group_names = list(class_names), list(group_names)
        n_groups = max(1, len(self.group_names))
        self.register_buffer("dro_q", torch.full((n_groups,), 1.0 / n_groups))  # group DRO weights (checkpointed)
        for split in ("train", "val", "test"):
            setattr(self, f"{split}_metrics", torch.nn.ModuleDict({
                "acc": MulticlassAccuracy(num_classes, average="micro"),
                "class_acc": MulticlassAccuracy(num_classes, average=None),
                "group_acc": GroupAccuracy(n_groups),
            }))
        self.last_results: dict[str, dict] = {}

    # model -------------------------------------------------------------------------------------
    def build_net(self) -> torch.nn.Module:
        """A freshly initialised network like `net` (same backbone, weights source and head; e.g. for JTT)."""
        hp = self.hparams
        net = load_backbone(hp.backbone, hp.num_classes, hp.pretrained, hp.pretrained_path,
                            dict(hp.backbone_kwargs or {}))
        net = net if hp.get("stem_stride") is None else small_image_stem(net, hp.stem_stride)
        return net.to(memory_format=torch.channels_last) if hp.get("channels_last") else net

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (or [0, 1] float) images -> the backbone's input."""
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = (x - self.mean) / self.std
        return x.contiguous(memory_format=torch.channels_last) if self.hparams.get("channels_last") else x

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits [n, num_classes] for uint8 images [n, 3, h, w]."""
        return self.net(self.normalize(images))

    def use_loader_size(self, image_size: int, interpolation: str) -> None:
        """Judge outside images at the side and with the filter the train loader resizes files with."""
        check_interpolation(interpolation)
        prefers = self.preprocessing.image_size
        if (self.hparams.pretrained or self.hparams.pretrained_path) and int(image_size) != prefers:
            log.warning("the loaders deliver %d px images while %s's pretrained config expects %d px: set "
                        "data.image_size=%d (or null to follow the model) unless you mean to fine-tune at %d px",
                        image_size, self.hparams.backbone, prefers, prefers, image_size)
        self.preprocessing = replace(self.preprocessing, image_size=int(image_size), interpolation=interpolation)
        self.loader_size = (int(image_size), interpolation)
        log.info("classifier input: %d px (%s resize, as the loaders make it), mean %s, std %s", image_size,
                 interpolation, [round(m, 4) for m in self.preprocessing.mean],
                 [round(v, 4) for v in self.preprocessing.std])

    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and getattr(dm, "image_size", None) and getattr(dm, "interpolation", None):
            self.use_loader_size(dm.image_size, dm.interpolation)

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images of any size (uint8, or [0, 1] float) as the train loader would load them from PNG files."""
        if self.loader_size is None and not self._resize_unattached:  # no loader known: judge them as they are
            return images if images.dtype == torch.uint8 else to_uint8(images)
        return self.preprocessing.resize(images)

    @torch.no_grad()
    def predict_proba(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Class probabilities for images of any size, resized as the train loader resizes files; eval mode."""
        was_training = self.training
        self.eval()
        out = [F.softmax(self(self.prepare_images(images[i : i + batch_size]).to(self.device)), -1).cpu()
               for i in range(0, len(images), batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.hparams.num_classes)

    # losses ------------------------------------------------------------------------------------
    def compute_loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """ERM, per-sample weighted, or online group DRO (Sagawa et al. 2020) over the batch's groups."""
        per_sample = F.cross_entropy(logits, batch["label"], reduction="none",
                                     label_smoothing=self.hparams.label_smoothing)
        kind = self.hparams.loss
        if kind == "erm":
            return per_sample.mean()
        if kind == "weighted":
            w = batch["weight"].to(per_sample.dtype)
            return (w * per_sample).sum() / w.sum().clamp(min=1e-8)
        if self.hparams.dro_groups == "discovered" and "loss_group" not in batch:
            raise RuntimeError("model.dro_groups=discovered needs batches with 'loss_group': use the discovered-groups remedy "
                               "(remedy=discovered_groups; +augment=group_dro_discovered sets it)")
        groups = batch["loss_group"] if self.hparams.dro_groups == "discovered" else batch["group"]
        known = groups >= 0
        n = len(self.dro_q)
        sums = torch.zeros(n, device=logits.device).index_add(0, groups[known], per_sample[known])
        counts = torch.bincount(groups[known], minlength=n).float()
        group_loss = sums / counts.clamp(min=1)
        with torch.no_grad():
            q = self.dro_q * torch.exp(self.hparams.dro_step_size * group_loss.detach() * (counts > 0))
            self.dro_q.copy_(q / q.sum())
        dro = (self.dro_q * group_loss).sum()
        unknown = per_sample[~known]  # e.g. injected samples without a group: plain ERM term
        return dro + (unknown.mean() if len(unknown) else 0.0)

    def reset_group_weights(self, num_groups: int) -> None:
        """Restart the group-DRO weights, uniform over `num_groups` (new discovered groups)."""
        n = max(1, num_groups)
        self.dro_q.resize_(n).fill_(1.0 / n)  # in place: the same buffer object (DDP keeps references to buffers)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.loader_size is not None:  # so a reloaded model judges outside images at the size it trained at
            checkpoint["blindspot_loader_size"] = list(self.loader_size)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if checkpoint.get("blindspot_loader_size") and self.loader_size is None:  # a fit's own loader wins
            self.use_loader_size(*checkpoint["blindspot_loader_size"])
        q = checkpoint.get("state_dict", {}).get("dro_q")
        if q is not None and q.shape != self.dro_q.shape:  # discovered groups: the saved run had another count
            self.reset_group_weights(len(q))

    # steps -------------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.compute_loss(logits, batch)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}, "
                f"batch {batch_idx}, sample indices {batch['index'][:8].tolist()}...): lower model.optimizer.lr, "
                "or check the data of that batch")
        self._update("train", logits, batch)
        self.log("train/loss", loss, prog_bar=True, on_step=True, on_epoch=True, batch_size=len(logits))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step("val", batch)

    def test_step(self, batch: dict, batch_idx: int) -> dict:
        return self._eval_step("test", batch)

    def _eval_step(self, split: str, batch: dict) -> dict:
        logits = self(batch["image"])
        loss = F.cross_entropy(logits, batch["label"])
        self._update(split, logits, batch)
        self.log(f"{split}/loss", loss, on_epoch=True, batch_size=len(logits), sync_dist=True)
        probs = F.softmax(logits.float(), -1)
        return {"probs": probs.detach(), "preds": probs.argmax(-1), "index": batch["index"], "label": batch["label"]}

    def _update(self, split: str, logits: torch.Tensor, batch: dict) -> None:
        preds = logits.argmax(-1)
        m = getattr(self, f"{split}_metrics")
        m["acc"].update(preds, batch["label"])
        m["class_acc"].update(preds, batch["label"])
        m["group_acc"].update(preds, batch["label"], batch["group"])

    def _log_epoch(self, split: str) -> None:
        m = getattr(self, f"{split}_metrics")
        acc, per_class, per_group = m["acc"].compute(), m["class_acc"].compute(), m["group_acc"].compute()
        results = {"acc": float(acc), "per_class": dict(zip(self.class_names, per_class.tolist()))}
        values = {}
        for name, a in results["per_class"].items():
            values[f"{split}/acc_class/{name}"] = a
        results["worst_class_acc"] = worst_group(per_class)
        values[f"{split}/worst_class_acc"] = results["worst_class_acc"]
        if self.group_names:
            results["per_group"] = dict(zip(self.group_names, per_group.tolist()))
            results["worst_group_acc"] = worst_group(per_group)
            values[f"{split}/mean_group_acc"] = float(torch.nanmean(per_group))
            for name, a in results["per_group"].items():
                if a == a:  # skip empty groups (NaN)
                    values[f"{split}/acc_group/{name}"] = a
        # without group labels every class is its own group: worst_group_acc is then the worst class
        values[f"{split}/worst_group_acc"] = results.get("worst_group_acc", results["worst_class_acc"])
        self.log_dict(values, prog_bar=False)
        self.log(f"{split}/acc", acc, prog_bar=True)
        self.last_results[split] = results
        for metric in m.values():
            metric.reset()

    def on_train_epoch_end(self) -> None:
        self._log_epoch("train")

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch("test")

    # optimisation ------------------------------------------------------------------------------
    def configure_optimizers(self):
        opt = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return opt
        interval = self.hparams.get("scheduler_interval", "epoch")
        extra = {"total_steps": self.remaining_steps()} if takes_total_steps(self.scheduler_factory) else {}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=opt, **extra),
                                                   "interval": interval}}

    def remaining_steps(self) -> int:
        """Optimiser steps left in this fit (a scheduler rebuilt mid-run, e.g. by JTT, spans only the rest)."""
        trainer = self.trainer
        per_epoch = max(1, int(trainer.estimated_stepping_batches) // max(1, trainer.max_epochs))
        return per_epoch * max(1, trainer.max_epochs - trainer.current_epoch)

    def lr_scheduler_step(self, scheduler, metric) -> None:
        """Step the scheduler; a finished fixed-length schedule holds its last rate (injected data lengthens epochs)."""
        total = getattr(scheduler, "total_steps", None)
        if total is not None and scheduler.last_epoch >= total - 1:
            return
        scheduler.step() if metric is None else scheduler.step(metric)


def takes_total_steps(factory: Callable) -> bool:
    """True for schedulers sized in optimiser steps (e.g. OneCycleLR), which get this fit's step count."""
    func = getattr(factory, "func", factory)
    return "total_steps" in inspect.signature(func).parameters and "total_steps" not in getattr(factory, "keywords", {})


# pretrained backbones ----------------------------------------------------------------------------
def check_pretrained_architecture(backbone: str, pretrained: bool, pretrained_path: str | None,
                                  backbone_kwargs: dict | None, stem_stride: int | None) -> None:
    """Refuse architecture changes (slim widths, stem surgery) on a backbone that loads pretrained weights."""
    if not (pretrained or pretrained_path):
        return
    changed = sorted(set(backbone_kwargs or {}) - WEIGHT_SAFE_KWARGS)
    keys = ([f"model.backbone_kwargs ({', '.join(changed)})"] if changed else []) + (
        [f"model.stem_stride ({stem_stride})"] if stem_stride is not None else [])
    if keys:
        source = f"model.pretrained_path={pretrained_path}" if pretrained_path else "model.pretrained=true"
        raise ValueError(
            f"{source} loads {backbone!r} weights, which fit only the architecture timm builds, but "
            f"{' and '.join(keys)} change it (the built-in world's slim settings from model=classifier). Use "
            "model=pretrained, or set model.backbone_kwargs=null model.stem_stride=null")


@contextlib.contextmanager
def _hub_offline():
    """Hugging Face hub look-ups answered from the local cache only (there is no network here)."""
    try:
        import huggingface_hub.constants as hub
    except ImportError:  # pragma: no cover - timm needs it for hub weights anyway
        yield
        return
    previous, previous_env = hub.HF_HUB_OFFLINE, os.environ.get("HF_HUB_OFFLINE")
    hub.HF_HUB_OFFLINE, os.environ["HF_HUB_OFFLINE"] = True, "1"
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous
        if previous_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous_env


def download_hint(backbone: str) -> str:
    """Where timm's pretrained weights for a model name live on the Hugging Face hub."""
    import timm

    try:
        hub_id = timm.models.get_pretrained_cfg(backbone).hf_hub_id
    except Exception:  # an unknown tag or a model without pretrained weights
        hub_id = None
    return (f"https://huggingface.co/{hub_id} (file model.safetensors)" if hub_id else
            f"timm's {backbone!r} weights (`timm.create_model('{backbone}', pretrained=True)` on a machine with network)")


def check_weights_fit(backbone: str, path: str, num_classes: int, kwargs: dict) -> None:
    """A clear error when a weights file is unreadable or holds weights of another architecture."""
    import timm
    from timm.models import load_state_dict

    try:
        state = load_state_dict(path, weights_only=True)
    except Exception as err:  # safetensors / torch raise many kinds for a damaged or foreign file
        raise BackboneWeightsMismatchError(
            f"model.pretrained_path={path!r} could not be read as {backbone!r} weights ({type(err).__name__}: "
            f"{err}); it should be a .safetensors or .pth state dict: download {download_hint(backbone)} again"
        ) from err
    try:
        with torch.device("meta"):  # shapes only: no memory, no initialisation cost
            ref = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **kwargs)
    except Exception:  # some models initialise with ops the meta device lacks
        ref = timm.create_model(backbone, pretrained=False, num_classes=num_classes, **kwargs)
    entry = timm.models.model_entrypoint(timm.models.get_arch_name(backbone))
    filter_fn = getattr(sys.modules.get(entry.__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm remaps some original checkpoint layouts before loading
        try:
            state = filter_fn(state, ref)
        except Exception:  # the filter needs real tensors or another layout: compare as saved
            pass
    heads = ref.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    expected = {k: v.shape for k, v in ref.state_dict().items() if not any(k.startswith(f"{h}.") for h in heads)}
    missing = [k for k in expected if k not in state]
    wrong = [(k, tuple(state[k].shape), tuple(shape)) for k, shape in expected.items()
             if k in state and tuple(state[k].shape) != tuple(shape)]
    if missing or wrong:
        details = []
        if missing:
            details.append(f"{len(missing)} of its {len(expected)} tensors are not in the file (e.g. {missing[:3]})")
        if wrong:
            k, have, want = wrong[0]
            details.append(f"{len(wrong)} have another shape (e.g. {k}: {list(have)} in the file, {list(want)} in "
                           f"{backbone})")
        raise BackboneWeightsMismatchError(
            f"model.pretrained_path={path!r} does not hold weights of timm model {backbone!r} (model.backbone): "
            f"{'; '.join(details)}. They are weights of another architecture: set model.backbone to the model they "
            f"were saved from, or download {download_hint(backbone)} and point model.pretrained_path at it")


def load_backbone(backbone: str, num_classes: int, pretrained: bool = False, pretrained_path: str | None = None,
                  kwargs: dict | None = None) -> torch.nn.Module:
    """A timm backbone, with pretrained weights from a local file or the local Hugging Face cache if asked."""
    kwargs = dict(kwargs or {})
    if pretrained_path is not None:
        if not os.path.isfile(pretrained_path):
            raise BackboneWeightsError(
                f"model.pretrained_path={pretrained_path!r} does not exist. Download {download_hint(backbone)} and "
                "set model.pretrained_path=/path/to/model.safetensors (a .pth state dict works too), or set "
                "model.pretrained_path=null model.pretrained=true to use weights already in the Hugging Face cache")
        _check_name(backbone)
        check_weights_fit(backbone, pretrained_path, num_classes, kwargs)
    try:
        with _hub_offline():
            return create_backbone(backbone, num_classes, pretrained, pretrained_path, kwargs)
    except RuntimeError as err:
        if "size mismatch" in str(err) or "Missing key" in str(err) or "Unexpected key" in str(err):
            where = f"model.pretrained_path={pretrained_path!r}" if pretrained_path else f"the cached {backbone!r} weights"
            raise BackboneWeightsMismatchError(
                f"{where} do not fit timm model {backbone!r} (model.backbone): they are weights of another "
                f"architecture, or model.backbone_kwargs changed it. ({str(err).splitlines()[0]} ...)") from err
        raise


def _check_name(backbone: str) -> None:
    """The unknown-name error of `create_backbone`, before any weights file is read."""
    import timm

    if not backbone.startswith("hf-hub:") and not timm.is_model(backbone):
        create_backbone(backbone, 1)  # raises the error that lists close names


def resolve_preprocessing(net: torch.nn.Module, mean: Sequence[float] | None, std: Sequence[float] | None,
                          image_size: int | None, interpolation: str | None, loads_weights: bool) -> Preprocessing:
    """Side, filter, mean and std: the configured ones, the rest from timm's pretrained config of the backbone."""
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(net)
    size = cfg["input_size"][-2:]
    if size[0] != size[1]:
        log.warning("%s's pretrained config asks for %s x %s input; Blindspot's loaders make square images of %d px "
                    "(set model.image_size to change)", type(net).__name__, size[0], size[1], max(size))
    resolved = Preprocessing(
        image_size=int(image_size or max(size)), interpolation=interpolation or cfg.get("interpolation") or "bicubic",
        mean=as_tuple(mean if mean is not None else cfg["mean"]), std=as_tuple(std if std is not None else cfg["std"]))
    if loads_weights:
        differs = [k for k, given, own in (("model.mean", mean, cfg["mean"]), ("model.std", std, cfg["std"]))
                   if given is not None and not torch.allclose(torch.tensor(as_tuple(given)), torch.tensor(own))]
        if differs:
            log.warning("%s differ from the backbone's pretrained config (mean %s, std %s), the normalisation its "
                        "weights expect: set %s (model=pretrained does) unless you mean it", " and ".join(differs),
                        list(cfg["mean"]), list(cfg["std"]), " ".join(f"{k}=null" for k in differs))
    log.debug("classifier prefers %d px, %s resize; normalises with mean %s, std %s", resolved.image_size,
              resolved.interpolation, list(resolved.mean), list(resolved.std))
    return resolved
