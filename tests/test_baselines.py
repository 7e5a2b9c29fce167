"""Baselines: the Lightning-free pieces (blindspot/baselines), and a short real fit of each method on the tiny world
(tiny random CLIP) that checks it did its thing: JTT, group DRO (oracle / discovered groups), DFR (oracle /
discovered groups) and retrieval from the world's pool."""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import pytest
import torch
from lightning import Callback

from tests.helpers import TINY_WORLD
from tests.tiny_models import make_tiny_clip

BACKBONE = {"layers": [1, 1, 1, 1], "channels": [8, 16, 32, 64], "stem_width": 8}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return make_tiny_clip(tmp_path_factory.mktemp("tiny_clip") / "clip")


def discovery_overrides(clip_name: str, cache_dir) -> list[str]:
    """A discovery round at the end of epoch 1 that finds modes even for a barely trained model."""
    return [f"clip.name={clip_name}", "clip.pretrained=null", "data.val_per_group=6",
            "discovery.min_support=3", "discovery.min_error_gap=0.0",
            "loop.start_epoch=1", "loop.max_rounds=1",
            f"loop.cache_dir={cache_dir}"]


def fit(cfg, *extra: Callback):
    """train.run's fit (same instantiation), with extra probe callbacks after the configured ones."""
    import hydra
    import lightning as L

    from train import build

    L.seed_everything(cfg.seed, workers=True)
    dm, model, callbacks, _ = build(cfg)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks + list(extra), logger=False)
    trainer.fit(model, datamodule=dm)
    return trainer, model, dm


def make_classifier(**kwargs):
    from lightning_modules.classifier import ImageClassifier

    args = dict(backbone="resnet18", num_classes=3, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                backbone_kwargs=BACKBONE)
    return ImageClassifier(**{**args, **kwargs})


# ---------------------------------------------------------------------------------------------- Lightning-free pieces

def test_jtt_error_set_gets_weight_lambda():
    from blindspot.baselines import error_set, upweight

    errors = error_set(torch.tensor([0, 1, 2, 2, 0]), torch.tensor([0, 2, 2, 1, 1]))
    assert errors.tolist() == [1, 3, 4]
    assert upweight(errors, 5.0) == {1: 5.0, 3: 5.0, 4: 5.0}
    with pytest.raises(ValueError, match=">= 1"):
        upweight(errors, 0.5)


def test_reinitialize_gives_a_fresh_seeded_twin_and_leaves_the_global_rng_alone():
    from blindspot.baselines import reinitialize_

    def build():
        return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))

    net = build()
    params = list(net.parameters())
    with torch.no_grad():
        for p in params:
            p.add_(1.0)
    net[1].running_mean.fill_(5.0)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    reinitialize_(net, build, seed=7)
    assert torch.equal(torch.rand(3), expected_next)  # the training RNG stream is untouched
    torch.manual_seed(7)
    fresh = build()
    for (k, a), b in zip(net.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(p is q for p, q in zip(params, net.parameters()))  # in place: optimisers can be rebuilt on them


def _mode(class_index, members, direction=None, mode_id="m", score=1.0, class_name=None):
    from blindspot.modes import FailureMode

    return FailureMode(class_index, class_name or f"c{class_index}", list(members), 0.8, 0.3, score,
                       mode_id=mode_id, direction=direction)


def test_discovered_groups_follow_the_failure_direction_beyond_the_slice_cut():
    from blindspot.baselines import assign_groups, groups_from_members

    e1, e2 = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    # validation: class 0 has 6 samples, 2 of them far along e1 (the slice), class 1 has 2
    val = torch.stack([e2 + 0.1 * e1, e2 + 0.2 * e1, e2, e2 - 0.1 * e1, e1 + 0.1 * e2, e1 + 0.2 * e2, e2, e1])
    val_labels = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1])
    modes = [_mode(0, [4, 5], direction=e1.tolist(), mode_id="r0-c0-0")]
    train = torch.stack([e1 + 0.15 * e2, e1 + 0.3 * e2, e2 + 0.3 * e1, e1])  # the cut: e1 + 0.2 e2's projection
    groups, names = assign_groups(train, torch.tensor([0, 0, 0, 1]), modes, ["c0", "c1"], val, val_labels)
    assert names == ["c0|rest", "c1|rest", "c0|r0-c0-0"]
    assert groups.tolist() == [2, 0, 0, 1]  # beyond the cut -> mode; short of it -> rest; other class -> its rest
    # a mode without a direction (clusters) uses its members' offset from the class centroid
    groups, _ = assign_groups(train, torch.tensor([0, 0, 0, 1]), [_mode(0, [4, 5])], ["c0", "c1"], val, val_labels)
    assert groups[0] == 2 and groups[2] == 0
    # validation samples: by membership, the better-ranked mode wins an overlap
    groups, names = groups_from_members(val_labels, [_mode(0, [4, 5], mode_id="a"), _mode(0, [5, 3], mode_id="b")],
                                        ["c0", "c1"])
    assert groups.tolist() == [0, 0, 0, 3, 2, 2, 1, 1] and names[2:] == ["c0|a", "c0|b"]


def test_dfr_halves_and_balanced_subsamples():
    from blindspot.baselines import balanced_subsample, split_halves

    groups = torch.tensor([0] * 7 + [1] * 4 + [2] * 2)
    a, b = split_halves(groups, seed=0)
    assert sorted(a.tolist() + b.tolist()) == list(range(13))
    assert torch.bincount(groups[a]).tolist() == [4, 2, 1] and torch.bincount(groups[b]).tolist() == [3, 2, 1]
    pick = balanced_subsample(groups, torch.arange(13), torch.Generator().manual_seed(0))
    assert torch.bincount(groups[pick]).tolist() == [2, 2, 2]


def test_dfr_balanced_head_ignores_the_spurious_feature():
    from blindspot.baselines import fit_dfr

    g = torch.Generator().manual_seed(0)
    n = 800
    y = torch.randint(0, 2, (n,), generator=g)
    spurious = torch.where(torch.rand(n, generator=g) < 0.9, y, 1 - y)  # agrees with the label in 90% of samples
    groups = 2 * y + spurious
    core = (2 * y - 1) + 0.5 * torch.randn(n, generator=g)
    feats = torch.stack([core, 3.0 * (2 * spurious - 1) + 0.1 * torch.randn(n, generator=g),
                         torch.randn(n, generator=g)], 1) + 4.0
    res = fit_dfr(feats, y, groups, num_classes=2, Cs=[0.01, 1.0], n_subsamples=3, seed=0)
    assert res.C in (0.01, 1.0) and set(res.scores) == {0.01, 1.0}
    assert res.groups == 4 and res.per_group == int(torch.bincount(groups).min())
    assert res.weight.shape == (2, 3) and res.bias.shape == (2,)
    margin = res.weight[1] - res.weight[0]
    assert margin[0] > 0 and margin[0] * 1.0 > abs(margin[1]) * 3.0  # the core feature drives the decision
    preds = (feats @ res.weight.T + res.bias).argmax(1)  # the head applies to raw (unstandardised) features
    worst = min(float((preds[groups == k] == y[groups == k]).float().mean()) for k in range(4))
    assert worst == pytest.approx(res.fit_accuracy["worst_group_acc"]) and worst > 0.8


def test_retrieval_takes_the_nearest_free_pool_images_of_the_mode_class():
    from blindspot.baselines import select_for_modes

    queries = torch.eye(4)  # validation embeddings: one per axis
    pool = torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0, 0], [0.8, 0.2, 0, 0], [0.99, 0, 0, 0.1], [0, 1.0, 0, 0],
                         [0, 0.9, 0.1, 0]])
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    modes = [_mode(0, [0], mode_id="a", score=3.0), _mode(1, [0, 1], mode_id="b", score=1.0)]
    picks = select_for_modes(modes, queries, pool, labels, budget=5, taken=[0])  # budget split 3 : 2 by score
    # mode a wants 3 but class 0 has only 2 free images (0 is taken); nearest first; b takes 4 and 3 (class 1)
    assert [(p.mode_id, p.pool_index, p.label) for p in picks] == [("a", 1, 0), ("a", 2, 0), ("b", 4, 1), ("b", 3, 1)]
    assert picks[0].similarity > picks[1].similarity
    loose = select_for_modes(modes[:1], queries, pool, labels, budget=2, match_label=False)
    assert [p.pool_index for p in loose] == [0, 3]  # nearness alone: pool image 3 (weak label 1) is taken too


def test_loss_groups_travel_in_batches_and_state():
    from datamodules.base import BlindspotDataModule
    from datamodules.datasets import TensorImageDataset

    class Tiny(BlindspotDataModule):
        class_names = ["a", "b"]

    dm = Tiny(batch_size=4)
    dm.train_set = TensorImageDataset(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0]))
    assert "loss_group" not in dm.train_set[0]
    dm.set_loss_groups(torch.tensor([0, 1, 2, -1, 2]), ["a|rest", "b|rest", "a|m"])
    assert [dm.train_set[i]["loss_group"] for i in range(5)] == [0, 1, 2, -1, 2]
    batch = next(iter(dm.train_dataloader()))
    assert torch.equal(batch["loss_group"], dm.loss_groups[batch["index"]])
    other = Tiny()
    other.train_set = TensorImageDataset(torch.zeros(5, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1, 0]))
    other.load_state_dict(dm.state_dict())
    assert other.train_set[4]["loss_group"] == 2 and other.loss_group_names == dm.loss_group_names
    with pytest.raises(ValueError, match="5 train samples"):
        dm.set_loss_groups(torch.zeros(3, dtype=torch.long), ["x"])


def test_group_dro_over_discovered_groups_uses_loss_group_and_resizes_on_load():
    model = make_classifier(loss="group_dro", dro_groups="discovered")  # no ground-truth groups needed
    model.reset_group_weights(3)
    batch = {"label": torch.tensor([0, 1, 2, 0]), "group": torch.tensor([-1, -1, -1, -1]),
             "loss_group": torch.tensor([0, 0, 2, -1]), "weight": torch.ones(4)}
    loss = model.compute_loss(torch.randn(4, 3), batch)
    assert torch.isfinite(loss) and model.dro_q.shape == (3,)
    assert model.dro_q[0] > model.dro_q[1] and model.dro_q[2] > model.dro_q[1]  # group 1 had no samples: no update
    with pytest.raises(RuntimeError, match="remedy=discovered_groups"):
        model.compute_loss(torch.randn(4, 3), {k: v for k, v in batch.items() if k != "loss_group"})
    fresh = make_classifier(loss="group_dro", dro_groups="discovered")
    ckpt = {"state_dict": model.state_dict()}
    fresh.on_load_checkpoint(ckpt)
    fresh.load_state_dict(ckpt["state_dict"])  # a resumed run: the saved group count, not the constructor's
    assert torch.equal(fresh.dro_q, model.dro_q)


def test_bad_configurations_name_the_fix():
    from blindspot.remedies import RemedyContext
    from blindspot.remedies.groups import DiscoveredGroupsRemedy
    from blindspot.remedies.retrieval import RetrievalRemedy
    from callbacks.jtt import JustTrainTwice
    from datamodules.base import BlindspotDataModule

    with pytest.raises(ValueError, match="group_dro_discovered"):
        make_classifier(loss="group_dro")  # the oracle on data without groups
    stub = SimpleNamespace(max_epochs=2, callbacks=[], datamodule=BlindspotDataModule())
    with pytest.raises(ValueError, match="trainer.max_epochs"):
        JustTrainTwice(identification_epochs=2).setup(stub, make_classifier(loss="weighted"), "fit")
    with pytest.raises(ValueError, match="model.loss=weighted"):
        JustTrainTwice(identification_epochs=1).setup(stub, make_classifier(), "fit")
    context = RemedyContext(clip=None, class_names=["a"], predict_proba=None, embed=None, hparams={"loss": "erm"})
    with pytest.raises(ValueError, match="pool"):
        RetrievalRemedy(output_dir="unused").prepare(context)
    with pytest.raises(ValueError, match="model.loss=group_dro"):
        DiscoveredGroupsRemedy().prepare(context)


# ---------------------------------------------------------------------------------------------- short real fits

class Probe(Callback):
    """Records network weights at epoch boundaries and what training batches carried."""

    def __init__(self):
        self.weights, self.batches = {}, {}

    def _net(self, pl_module):
        return {k: v.detach().clone() for k, v in pl_module.net.state_dict().items()}

    def on_train_epoch_start(self, trainer, pl_module):
        self.weights[f"start{trainer.current_epoch}"] = self._net(pl_module)

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights[f"end{trainer.current_epoch}"] = self._net(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.batches.setdefault(trainer.current_epoch, []).append(
            {k: batch[k].cpu() for k in ("index", "loss_group", "weight") if k in batch})


def test_jtt_upweights_the_identification_errors_and_trains_a_fresh_model(compose_cfg, tmp_path):
    cfg = compose_cfg(TINY_WORLD + ["+augment=jtt", "trainer.max_epochs=2", "callbacks.jtt.identification_epochs=1",
                                    "callbacks.jtt.upweight=5"])
    probe = Probe()
    trainer, model, dm = fit(cfg, probe)
    jtt = next(c for c in trainer.callbacks if type(c).__name__ == "JustTrainTwice")
    # the error set is exactly what the epoch-1 (ERM) model gets wrong on the un-augmented training images
    model.net.load_state_dict(probe.weights["end0"])
    wrong = torch.nonzero(model.predict_proba(dm.train_images()).argmax(-1) != dm.train_set.labels).flatten()
    assert len(wrong) > 0 and jtt.errors == wrong.tolist()
    expected = torch.ones(len(dm.train_set))
    expected[wrong] = 5.0
    assert torch.equal(dm.train_set.weights, expected)
    assert all(torch.equal(b["weight"], expected[b["index"]]) for b in probe.batches[1])  # the second model's loss
    # train twice: epoch 2 starts from a fresh seeded initialisation, not from the identification model
    torch.manual_seed(cfg.seed)
    fresh = model.build_net().state_dict()
    assert all(torch.equal(v, fresh[k]) for k, v in probe.weights["start1"].items())
    assert not all(torch.equal(v, probe.weights["end0"][k]) for k, v in probe.weights["start1"].items())
    # ... with a fresh optimiser and scheduler: their counters cover the second model's epoch only
    steps = len(probe.batches[1])
    assert {int(s["step"]) for s in trainer.optimizers[0].state.values()} == {steps}
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 1
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["method"] == "jtt" and report["extra"]["jtt"]["error_set_size"] == len(wrong)


def test_jtt_final_epochs_gives_the_second_model_a_full_run(compose_cfg, tmp_path):
    """final_epochs=2 after 1 identification epoch: 3 epochs in all, though trainer.max_epochs says 2."""
    cfg = compose_cfg(TINY_WORLD + ["+augment=jtt", "trainer.max_epochs=2", "callbacks.jtt.identification_epochs=1",
                                    "callbacks.jtt.final_epochs=2", "test=false"])
    probe = Probe()
    trainer, _, _ = fit(cfg, probe)
    jtt = next(c for c in trainer.callbacks if type(c).__name__ == "JustTrainTwice")
    assert sorted(probe.batches) == [0, 1, 2] and jtt.stats["second_model_start_epoch"] == 1


def test_jtt_resumed_between_identification_and_restart_is_exact(compose_cfg, tmp_path):
    from train import run

    base = TINY_WORLD + ["+augment=jtt", "trainer.max_epochs=2", "callbacks.jtt.identification_epochs=1", "test=false"]
    run(compose_cfg(base, output_dir=tmp_path / "full"))
    run(compose_cfg(base + ["+trainer.max_steps=12"], output_dir=tmp_path / "half"))  # stops after epoch 1 (12 steps)
    half = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in half["callbacks"].items() if "JustTrainTwice" in k)
    assert state["errors"] and not state["restarted"]  # errors found, second model not yet started
    run(compose_cfg(base + [f"ckpt_path={tmp_path / 'half' / 'checkpoints' / 'last.ckpt'}"],
                    output_dir=tmp_path / "half"))
    a = torch.load(tmp_path / "full" / "checkpoints" / "last.ckpt", weights_only=False)
    b = torch.load(tmp_path / "half" / "checkpoints" / "last.ckpt", weights_only=False)
    assert a["epoch"] == b["epoch"] == 1
    for k, v in a["state_dict"].items():
        assert torch.allclose(v.float(), b["state_dict"][k].float(), atol=1e-5), k  # same as never stopping


def test_group_dro_oracle_moves_the_ground_truth_group_weights(compose_cfg, tmp_path):
    from train import run

    run(compose_cfg(TINY_WORLD + ["+augment=group_dro_oracle", "test=false"]))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    q = ckpt["state_dict"]["dro_q"]
    assert ckpt["hyper_parameters"]["loss"] == "group_dro" and q.shape == (36,)  # one weight per world group
    assert q.sum() == pytest.approx(1.0) and q.max() > q.min()
    assert json.loads((tmp_path / "report" / "report.json").read_text())["method"] == "group_dro_oracle"


def test_group_dro_over_discovered_groups(compose_cfg, tmp_path, tiny_clip):
    from blindspot.baselines import group_names
    from blindspot.embedding import cache_key

    cfg = compose_cfg(TINY_WORLD + ["+augment=group_dro_discovered", "trainer.max_epochs=2", "test=false",
                                    f"loop.cache_dir={tmp_path / 'emb'}",
                                    "loop.progress=false"]
                      + discovery_overrides(tiny_clip, tmp_path / "emb"))
    probe = Probe()
    trainer, model, dm = fit(cfg, probe)
    loop = next(c for c in trainer.callbacks if type(c).__name__ == "FailureLoopCallback").loop
    modes = loop.rounds[0].modes
    assert modes and dm.loss_group_names == group_names(modes, dm.class_names)
    groups = dm.loss_groups
    assert len(groups) == len(dm.train_set) and int(groups.min()) >= 0
    in_modes = 0
    for j, m in enumerate(modes):  # a mode's group holds only training samples of the mode's class
        members = groups == dm.num_classes + j
        assert bool((dm.train_set.labels[members] == m.class_index).all())
        in_modes += int(members.sum())
    assert in_modes > 0
    # epoch 1 is ERM (no sample in a group); epoch 2 batches carry the discovered groups to the loss
    assert all(bool((b["loss_group"] == -1).all()) for b in probe.batches[0])
    assert all(torch.equal(b["loss_group"], groups[b["index"]]) for b in probe.batches[1])
    assert model.dro_q.shape == (len(dm.loss_group_names),) and model.dro_q.max() > model.dro_q.min()
    assert (tmp_path / "emb" / f"clip-{cache_key(loop.clip.fingerprint, dm.train_fingerprint())}.pt").is_file()
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["WorldDataModule"]["loss_groups"] == groups.tolist()
    assert ckpt["state_dict"]["dro_q"].shape == model.dro_q.shape
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["rounds"][0]["remedy"] == "discovered_groups"
    assert sum(report["rounds"][0]["details"]["groups"].values()) == len(dm.train_set)


def _head(state: dict) -> torch.Tensor:
    return state["net.fc.weight"]


def test_dfr_replaces_the_head_on_group_balanced_validation_features(compose_cfg, tmp_path):
    class BeforeLastValidation(Callback):
        def on_validation_start(self, trainer, pl_module):
            self.state = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}

    probe = BeforeLastValidation()
    trainer, model, dm = fit(compose_cfg(TINY_WORLD + ["+augment=dfr", "data.val_per_group=4",
                                                       "callbacks.dfr.Cs=[0.1,1.0]", "callbacks.dfr.n_subsamples=2"]),
                             probe)
    trainer.test(model, datamodule=dm)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    dfr = report["extra"]["dfr"]  # the callback's logged scalars
    assert any(dfr["C"] == pytest.approx(c) for c in (0.1, 1.0))
    assert dfr["groups"] == 36 and dfr["per_group"] == 4  # every world group, equally many samples
    before = probe.state
    after = torch.load(tmp_path / "checkpoints" / "dfr.ckpt", weights_only=False)["state_dict"]
    assert not torch.allclose(_head(before), _head(after))  # a new last layer ...
    assert all(torch.equal(v, after[k]) for k, v in before.items() if k.startswith("net.") and ".fc." not in k)
    assert dfr["head_change"] > 0 and "test" in report["metrics"]  # ... on a frozen backbone, tested afterwards


def test_dfr_balances_by_discovered_groups(compose_cfg, tmp_path, tiny_clip):
    import hydra

    from blindspot.baselines import groups_from_members
    from blindspot.modes import FailureMode
    from train import run

    overrides = discovery_overrides(tiny_clip, tmp_path / "emb")
    overrides.remove("loop.start_epoch=1")  # dfr_discovered: the last epoch (here epoch 1)
    cfg = compose_cfg(TINY_WORLD + ["+augment=dfr_discovered", "test=false", "remedy.Cs=[1.0]",
                                    "remedy.n_subsamples=2"] + overrides)
    run(cfg)
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    rnd = report["rounds"][0]
    dfr, modes = rnd["details"], [FailureMode.from_dict(m) for m in rnd["modes"]]
    assert rnd["remedy"] == "dfr" and rnd["status"] == "remedied" and modes
    dm = hydra.utils.instantiate(cfg.data, _convert_="all")
    dm.setup()
    groups, names = groups_from_members(dm.val_set.labels, modes, dm.class_names)
    sizes = torch.bincount(groups, minlength=len(names))
    assert dfr["group_names"] == [n for n, k in zip(names, sizes) if k > 0]  # the final model's discovered groups
    assert dfr["per_group"] == int(sizes[sizes > 0].min()) < int(sizes.max())  # balanced: as many as the smallest


def test_retrieval_adds_nearest_pool_images_with_the_mode_label(compose_cfg, tmp_path, tiny_clip):
    from blindspot.images import load_image

    cfg = compose_cfg(TINY_WORLD + ["+augment=retrieval", "trainer.max_epochs=2", "test=false",
                                    "data.pool_per_class=20", "remedy.images_per_round=8",
                                    "loop.every_n_epochs=1",
                                    f"loop.cache_dir={tmp_path / 'emb'}",
                                    "loop.progress=false"]
                      + discovery_overrides(tiny_clip, tmp_path / "emb") + ["loop.max_rounds=2"])
    probe = Probe()
    trainer, model, dm = fit(cfg, probe)
    loop = next(c for c in trainer.callbacks if type(c).__name__ == "FailureLoopCallback").loop
    mode_class = {m.mode_id: m.class_index for r in loop.rounds for m in r.modes}
    records, pool = dm.synthetic, dm.pool_split()
    assert len(loop.rounds) == 2 and 0 < len(records) <= 16
    assert len({r["pool_index"] for r in records}) == len(records)  # never the same pool image twice
    for r in records:
        assert r["label"] == mode_class[r["mode_id"]] == int(pool.labels[r["pool_index"]])
        assert r["path"].startswith(str(tmp_path / "retrieved"))
        assert torch.equal(load_image(r["path"]), pool.images[r["pool_index"]])  # the pool image itself, as PNG
    first = [r for r in records if r["round"] == 0]
    trained_on = {i for b in probe.batches[1] for i in b["index"].tolist()}
    assert first and {len(dm.train_set) + k for k in range(len(first))} <= trained_on  # epoch 2 trains on them
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=False)
    state = next(v for k, v in ckpt["callbacks"].items() if "FailureLoopCallback" in k)["remedy"]
    assert sorted(state["taken"]) == sorted(r["pool_index"] for r in records)


def test_a_loop_run_started_from_the_erm_runs_checkpoint_ends_as_the_run_from_scratch(compose_cfg, tmp_path, tiny_clip):
    """The suite's branch: a loop method is ERM until its first round, so starting it from ERM's checkpoint of the
    epoch before (kept by model_checkpoint_keep) gives the same rounds, pool and weights as training from scratch."""
    from train import run

    shared = TINY_WORLD + ["trainer.max_epochs=3", "test=false", "data.val_per_group=6", "data.pool_per_class=20"]
    retrieval = shared + ["+augment=retrieval", "remedy.images_per_round=8", "loop.progress=false",
                          f"loop.cache_dir={tmp_path / 'emb'}"] + discovery_overrides(tiny_clip, tmp_path / "emb") \
        + ["loop.start_epoch=2"]
    run(compose_cfg(shared + ["+augment=none", "callbacks.model_checkpoint_keep.every_n_epochs=1"],
                    output_dir=tmp_path / "erm"))
    kept = tmp_path / "erm" / "checkpoints" / "keep_epoch_000.ckpt"
    assert sorted(p.name for p in kept.parent.glob("keep_*")) == [f"keep_epoch_00{e}.ckpt" for e in range(3)]
    run(compose_cfg(retrieval, output_dir=tmp_path / "fresh"))
    run(compose_cfg(retrieval + [f"ckpt_path={kept}"], output_dir=tmp_path / "branched"))

    def final(name):
        ckpt = torch.load(tmp_path / name / "checkpoints" / "last.ckpt", weights_only=False)
        loop = next(v for k, v in ckpt["callbacks"].items() if "FailureLoopCallback" in k)
        report = json.loads((tmp_path / name / "report" / "report.json").read_text())
        return ckpt, loop, [t["epoch"] for t in report["timeline"]]

    (a, loop_a, epochs_a), (b, loop_b, epochs_b) = final("fresh"), final("branched")
    assert a["epoch"] == b["epoch"] == 2 and epochs_a == epochs_b == [0, 1, 2]  # the report keeps ERM's epoch
    untimed = lambda loop: [{k: v for k, v in r.items() if k != "seconds"} for r in loop["rounds"]]  # noqa: E731
    assert loop_a["rounds"][0]["epoch"] == 1 and untimed(loop_a) == untimed(loop_b)
    assert sorted(loop_a["remedy"]["taken"]) == sorted(loop_b["remedy"]["taken"])
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
