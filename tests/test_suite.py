"""The suite of planted worlds: the seeded world generator, the ceiling, the slice metrics, the runner's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
from omegaconf import OmegaConf

from blindspot.world.dataset import Planted, _attribute_probs, group_names, planted_slices
from blindspot.world.spec import WorldSpec
from blindspot.world.suite import SuiteWorld, coverage, generate_worlds, natural_rate, split_sizes

ROOT = Path(__file__).resolve().parents[1]
SPEC = WorldSpec()
TEMPLATES = [{"blind_spots": ["color"], "shortcut": False}, {"blind_spots": ["size"], "shortcut": True},
             {"blind_spots": ["background", "color"], "shortcut": True}]
DEFAULT = {"seed": 0, "planted": [{"cls": "cross", "attribute": "background", "value": "grass", "rate": 0.35},
                                  {"cls": "star", "attribute": "background", "value": "grass", "rate": 0.0}]}


# ------------------------------------------------------------------------------------------------ generator

def test_the_same_seed_gives_the_same_worlds_and_another_seed_others():
    a = generate_worlds(TEMPLATES, n_worlds=6, seed=3, default_world=DEFAULT)
    b = generate_worlds(TEMPLATES, n_worlds=6, seed=3, default_world=DEFAULT)
    c = generate_worlds(TEMPLATES, n_worlds=6, seed=4, default_world=DEFAULT)
    assert [w.overrides() for w in a] == [w.overrides() for w in b]
    assert [w.overrides() for w in a[2:]] != [w.overrides() for w in c[2:]]
    assert a[0].name == "default" and a[0].planted == tuple(Planted(**p) for p in DEFAULT["planted"])
    assert [w.role for w in a[:2]] == ["default", "control"]


def test_the_default_suite_covers_every_kind_the_issue_asks_for():
    from benchmarks.suite import build_worlds, load_config

    spec, worlds = build_worlds(load_config("default"))
    cov = coverage(worlds, spec)
    assert len(worlds) >= 12 and len({w.name for w in worlds}) == len(worlds)
    assert cov["attributes"] == ["background", "color", "size"]
    assert cov["n_blind_spots"] == [1, 2] and cov["shortcut"] == [False, True]
    assert cov["controls"] >= 1 and all(0.0 <= r <= 0.05 for r in cov["rates"]) and 0.0 in cov["rates"]
    assert worlds[0].role == "default" and worlds[0].seed == 0
    for w in worlds:  # every blind spot is rare, every shortcut sits on the blind spot's confusable class
        for s in w.slices(spec):
            assert s["rate"] <= 0.05 and all(g in group_names(spec, list(w.planted)) for g in s["groups"])


def test_two_attribute_worlds_keep_the_slice_sizes_of_one_attribute_worlds():
    planted = [Planted("star", "background", "water", 0.0), Planted("heart", "color", "cyan", 0.01)]
    val, test = split_sizes(SPEC, planted, 20, 50)
    assert (val, test) == (4, 10)  # a background slice spans the 5 colours: 5 x 4 = 20 val, 5 x 10 = 50 test
    slices = planted_slices(SPEC, planted)
    assert min(len(s["groups"]) for s in slices) * val >= 20 and slices[0]["groups"][0] == "star|water|red"
    assert split_sizes(SPEC, planted[:1], 20, 50) == (20, 50)


def test_the_ceiling_samples_each_blind_spot_as_if_it_were_not_planted():
    worlds = generate_worlds(TEMPLATES * 2, n_worlds=8, seed=0, default_world=DEFAULT)
    for w in worlds:
        ceiling = w.ceiling(SPEC)
        assert not ceiling.slices(SPEC) or all(s["rate"] >= 0.1 for s in ceiling.slices(SPEC))
        assert group_names(SPEC, list(ceiling.planted)) == group_names(SPEC, list(w.planted))  # same groups
        removed = [p for p in w.planted if p not in w.blind_spots(SPEC)]
        for attribute in ("background", "color", "size"):
            filled = _attribute_probs(SPEC, list(ceiling.planted), attribute)
            natural = _attribute_probs(SPEC, removed, attribute)
            assert (filled - natural).abs().max() < 1e-5, (w.name, attribute)
    # a shortcut on the same class and attribute leaves less for the blind spot than the uniform share
    planted = (Planted("star", "background", "grass", 0.0), Planted("star", "background", "water", 0.4))
    assert natural_rate(SPEC, planted, planted[0]) == pytest.approx(0.6 / 5)
    # two blind spots of one class on one attribute are filled together: the class becomes uniform again
    two = SuiteWorld("two", 1, (Planted("star", "background", "grass", 0.0),
                                Planted("star", "background", "snow", 0.0)))
    probs = _attribute_probs(SPEC, list(two.ceiling(SPEC).planted), "background")
    assert probs[SPEC.classes.index("star")].tolist() == pytest.approx([1 / 6] * 6, abs=1e-5)


def test_world_overrides_compose_into_the_train_config(compose_cfg):
    w = generate_worlds(TEMPLATES, n_worlds=5, seed=0)[-1]  # a background + colour world with shortcuts
    cfg = compose_cfg(w.overrides())
    assert [Planted(**dict(p)) for p in cfg.data.planted] == list(w.planted)
    assert (cfg.data.seed, cfg.data.val_per_group, cfg.data.test_per_group) == (w.seed, w.val_per_group,
                                                                               w.test_per_group)


def test_a_bad_template_names_the_config_key():
    with pytest.raises(ValueError, match="worlds.templates"):
        generate_worlds([{"blind_spots": ["mood"]}], n_worlds=1, controls=0)
    with pytest.raises(ValueError, match="worlds.rates"):
        generate_worlds(TEMPLATES, n_worlds=2, rates=[0.3])


# ------------------------------------------------------------------------------------------------ metrics

def fake_report(per_group: dict, found: dict | None = None, avg: float = 0.9) -> dict:
    """A report.json with test metrics (and a discovery score per planted group when `found` is given)."""
    report = {"metrics": {"test": {"avg_acc": avg, "worst_group_acc": min(per_group.values()),
                                   "per_group": per_group}}, "rounds": [{"kept": 10}], "wall_seconds": 60.0}
    if found is not None:
        report["discovery"] = {"planted": [{"group": g, "found": f, "caption_hit": f, "handed": True}
                                           for g, f in found.items()]}  # a slice not in the top-k is handed on
    return report


def per_group(world: SuiteWorld, slice_acc: dict[str, float], other: float = 0.95) -> dict:
    """Per-group accuracies: `other` everywhere, slice_acc[group] on every test group of that slice."""
    accs = {g: other for g in group_names(SPEC, list(world.planted))}
    for s in world.slices(SPEC):
        for g in s["groups"]:
            accs[g] = slice_acc.get(s["group"], other)
    return accs


def test_gap_closed_and_not_failed_slices():
    from benchmarks.suite import STATUS_FAILED, STATUS_NOT_FAILED, gap_closed, slice_accuracy, slice_status

    th = {"fails_below": 0.7, "not_failed_at": 0.9}
    assert gap_closed(0.8, 0.2, 1.0, 0.02) == pytest.approx(0.75)
    assert gap_closed(0.1, 0.2, 1.0, 0.02) == pytest.approx(-0.125)  # worse than ERM: a negative share
    assert gap_closed(0.9, 0.9, 0.91, 0.02) is None  # nothing to close
    assert gap_closed(None, 0.2, 1.0, 0.02) is None
    assert slice_status(0.3, th) == STATUS_FAILED and slice_status(0.95, th) == STATUS_NOT_FAILED
    s = {"group": "star|grass", "groups": ["star|grass|red", "star|grass|cyan"]}
    assert slice_accuracy(fake_report({"star|grass|red": 0.2, "star|grass|cyan": 0.6}), s) == pytest.approx(0.4)


def test_evaluate_on_fake_reports(tmp_path):
    from benchmarks.suite import CEILING, STATUS_NOT_FAILED, build_worlds, evaluate, load_config

    cfg = load_config("default", ["worlds.n_worlds=4"])
    spec, worlds = build_worlds(cfg)
    default, control, other, partly = worlds
    assert control.role == "control" and not control.slices(spec)
    (bs,) = [s["group"] for s in other.slices(spec)]
    (ps,) = [s["group"] for s in partly.slices(spec)]
    acc = {  # default: star|grass failed and repaired; other: a slice ERM does not fail
        (default.name, "none"): {"star|grass": 0.2}, (default.name, "failure_diffusion"): {"star|grass": 0.8},
        (default.name, "untargeted_diffusion"): {"star|grass": 0.5}, (default.name, "retrieval"): {"star|grass": 0.9},
        (default.name, CEILING): {"star|grass": 1.0},
        (other.name, "none"): {bs: 0.95}, (other.name, "failure_diffusion"): {bs: 0.96},
        (other.name, CEILING): {bs: 0.97},
        (partly.name, "none"): {ps: 0.8}, (partly.name, "failure_diffusion"): {ps: 0.9},  # partly failed, missed
        (partly.name, CEILING): {ps: 1.0}}
    reports = {}
    for (world, method), slice_acc in acc.items():
        w = next(x for x in worlds if x.name == world)
        found = ({s["group"]: method != "retrieval" and w is not partly for s in w.slices(spec)}
                 if method not in ("none", CEILING) else None)
        reports[(world, method)] = [fake_report(per_group(w, slice_acc), found)]
    reports[(control.name, "none")] = [fake_report(per_group(control, {}, 0.90))]
    reports[(control.name, "failure_diffusion")] = [fake_report(per_group(control, {}, 0.85))]
    result = evaluate(cfg, spec, worlds, reports)
    rows = {s["id"]: s for s in result["slices"]}
    star = rows["default:star|grass"]
    assert star["gap_closed"]["failure_diffusion"] == pytest.approx(0.75)
    assert star["gap_closed"]["untargeted_diffusion"] == pytest.approx(0.375)
    assert star["found"] == {"failure_diffusion": 1.0, "untargeted_diffusion": 1.0, "retrieval": 0.0}
    assert star["handed"] == {"failure_diffusion": 1.0, "untargeted_diffusion": 1.0, "retrieval": 1.0}
    assert rows[f"{other.name}:{bs}"]["status"] == STATUS_NOT_FAILED
    summary = result["summary"]
    assert summary["failed_by_erm"] == ["default:star|grass"]
    assert summary["not_failed_by_erm"] == [f"{other.name}:{bs}"]
    assert summary["found_in_top_k"] == {"method": "failure_diffusion", "hits": 1.0, "of": 1, "rate": 1.0}
    assert summary["partly_failed"] == [f"{partly.name}:{ps}"]  # ERM 80%: not in the goals' set (< 70%) ...
    assert summary["partly_failed_too"]["found_in_top_k"] == {"method": "failure_diffusion", "hits": 1.0, "of": 2,
                                                               "rate": 0.5}  # ... but in the wider one
    assert summary["found_in_handed"] == {"method": "failure_diffusion", "hits": 1.0, "of": 1, "rate": 1.0}
    fd = summary["methods"]["failure_diffusion"]
    assert (fd["slices"], fd["gap_closed_mean"], fd["gap_closed_min"]) == (1, pytest.approx(0.75), pytest.approx(0.75))
    assert summary["controls"]["failure_diffusion"]["worst_delta"] == pytest.approx(-0.05)
    assert summary["controls"]["failure_diffusion"]["within_margin"] is False
    world = {r["world"]: r for r in result["per_world"]}
    assert world["default"]["methods"]["failure_diffusion"]["worst_group_acc"] == pytest.approx(0.8)


def test_a_missed_slice_names_the_modes_ranked_above_it():
    """A planted slice outside the top-k gets its rank and the top-k modes' groups with their accuracy at the round;
    the markdown lists it, and a found slice gets nothing."""
    from benchmarks.suite import build_worlds, evaluate, load_config, markdown_missed_rows

    cfg = load_config("default", ["worlds.n_worlds=1"])
    spec, (default,) = build_worlds(cfg)
    report = fake_report(per_group(default, {"star|grass": 0.3}))
    report["discovery"] = {"k": 1, "planted": [{"group": "star|grass", "found": False, "caption_hit": False,
                                                "handed": True, "rank": 2}]}
    report["metrics"]["baseline_test"] = {"per_group": {"star|grass": 0.25, "circle|brick": 0.4}}
    report["rounds"] = [{"modes": [{"majority_group": "circle|brick", "majority_share": 0.8,
                                    "group_acc_before": 0.4, "caption": "a photo of a circle on brick"}]}]
    reports = {(default.name, "none"): [fake_report(per_group(default, {"star|grass": 0.3}))],
               (default.name, "failure_diffusion"): [report]}
    (star,) = evaluate(cfg, spec, [default], reports)["slices"]
    assert star["outranked_by"] == [{"rank": 2, "acc_at_round": 0.25, "modes": [
        {"group": "circle|brick", "share": 0.8, "acc_at_round": 0.4, "caption": "a photo of a circle on brick"}]}]
    (row,) = markdown_missed_rows([star])
    assert row == "| default | star\\|grass | failed by ERM | 3 | 25% | circle\\|brick (80% of members, 40%) |"
    report["discovery"]["planted"][0]["found"] = True
    (star,) = evaluate(cfg, spec, [default], reports)["slices"]
    assert star["outranked_by"] == [] and markdown_missed_rows([star]) == []


def test_the_runner_keeps_finished_runs_and_writes_its_results(tmp_path, monkeypatch):
    """Finished runs are not run again (no train.py here); the ceiling of a control world is its ERM run."""
    from benchmarks import suite

    runs = tmp_path / "runs"
    cfg = suite.load_config("default", ["worlds.n_worlds=2"])
    spec, worlds = suite.build_worlds(cfg)
    jobs = suite.plan(cfg, spec, worlds, runs)
    control_ceiling = next(j for j in jobs if j.world == "control" and j.method == suite.CEILING)
    assert control_ceiling.alias and sum(not j.alias for j in jobs) == 9
    for job in jobs:  # one value per key: the world's split sizes replace any common ones
        keys = [a.split("=", 1)[0] for a in job.args]
        augment = "none" if job.method == "ceiling" else job.method
        assert len(keys) == len(set(keys)) and f"+augment={augment}" in job.args
    for job in jobs:
        w = next(x for x in worlds if x.name == job.world)
        report = fake_report(per_group(w, {"star|grass": 0.3 if job.method == "none" else 0.9}))
        report["breakdown"] = {"generate": 30.0} if job.method == "failure_diffusion" else {}
        suite._write_json(job.out / "report" / "report.json", report)
    monkeypatch.setenv("BLINDSPOT_RESULTS", str(tmp_path))
    real_run = subprocess.run

    def no_training(cmd, *a, **k):
        assert "train.py" not in cmd, "a finished run was run again"
        return real_run(cmd, *a, **k)

    monkeypatch.setattr(suite.subprocess, "run", no_training)
    assert suite.main(["worlds.n_worlds=2", "fresh_test_factor=0", "--out", str(runs), "--workers", "2",
                       "--methods", "none,ceiling"]) == 0  # fake reports, no checkpoints: their own test splits
    result = json.loads((tmp_path / "suite.json").read_text())
    assert result["runs"]["finished"] == result["runs"]["planned"] == 9 and not result["runs"]["missing"]
    assert result["summary"]["methods"]["failure_diffusion"]["gap_closed_mean"] == pytest.approx(1.0)
    text = (tmp_path / "suite.md").read_text()
    assert text.startswith("# Suite of planted worlds (`conf/suite/default.yaml` with `worlds.n_worlds=2 "
                           "fresh_test_factor=0`)\n")
    assert "star\\|grass" in text
    assert "none 2, failure_diffusion 2 (generation 1), untargeted_diffusion 2" in text  # 2 runs of 60 s each
    assert (tmp_path / "suite.png").stat().st_size > 1000
    assert result["invocations"] == []  # nothing ran: no measurement recorded


def test_quick_suite_runs_the_default_world_end_to_end(tmp_path):
    env = dict(os.environ, BLINDSPOT_RESULTS=str(tmp_path), PYTHONPATH=str(ROOT), WANDB_MODE="offline",
               BLINDSPOT_CACHE=str(tmp_path / "cache"))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.suite", "--quick", "--workers", "2", "--out",
                           str(tmp_path / "runs")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    tests = [p.name for p in (tmp_path / "cache" / "world").glob("world-test-*")]
    assert len(tests) == 3, tests  # the world's and its ceiling's test splits and the fresh one: all in BLINDSPOT_CACHE
    result = json.loads((tmp_path / "suite_quick.json").read_text())
    assert result["runs"]["finished"] == result["runs"]["planned"] == 5
    (star,) = result["slices"]
    assert star["group"] == "star|grass"
    assert all(0.0 <= star["accuracy"][m] <= 1.0 for m in ("none", "failure_diffusion", "retrieval", "ceiling"))
    assert star["found"] and (tmp_path / "suite_quick.png").stat().st_size > 1000
    assert result["settings"]["test_split"]["name"] == "fresh_test" and star["id"] in result["own_test"]["accuracy"]
    # the fresh test scores a run's checkpoint as its own test did: on the run's own test split it gives its report
    from benchmarks.common import checkpoint_classifier
    from benchmarks.fresh_test import split_metrics
    from blindspot.runtime import last_checkpoint
    run = Path(result["runs"]["folders"]["default/failure_diffusion/seed0"])
    own = hydra.utils.instantiate(OmegaConf.load(run / ".hydra" / "config.yaml").data, _convert_="all").split("test")
    report = json.loads((run / "report" / "report.json").read_text())["metrics"]["test"]
    again = split_metrics(checkpoint_classifier(last_checkpoint(run))(own.images), own)
    assert again["per_group"] == pytest.approx(report["per_group"]) and again["avg_acc"] == pytest.approx(
        report["avg_acc"])
    fresh = json.loads((run / "fresh_test.json").read_text())["metrics"]
    assert fresh["n"] == 4 * len(own) and set(fresh["per_group"]) == set(report["per_group"])
    # benchmarks.fresh_test scores given runs on that split again (from its cache) and pools them by label
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fresh_test", "--config", "quick", "--groups", "star|grass",
                           "--stem", "pooled", f"twice={run}", f"twice={run}"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (pooled,) = json.loads((tmp_path / "pooled.json").read_text())["pooled"]
    assert pooled["runs"] == 2 and pooled["star|grass"] == {"mean": fresh["per_group"]["star|grass"], "sd": 0.0}
    assert pooled["worst_group_acc"]["mean"] == fresh["worst_group_acc"]


def test_the_core_config_runs_are_the_default_configs_own(tmp_path):
    from benchmarks.suite import build_worlds, load_config, plan

    folders = {}
    for name in ("core", "default"):
        cfg = load_config(name)
        spec, worlds = build_worlds(cfg)
        folders[name] = {j.out for j in plan(cfg, spec, worlds, tmp_path)}
    assert folders["core"] < folders["default"]


def test_the_repair_config_spells_out_todays_failure_diffusion_defaults():
    from benchmarks.runs import composed_config
    from benchmarks.suite import load_config

    base = ("experiment=compare", "+augment=failure_diffusion", "seed=0", "logger=csv")
    spelled_out = tuple(load_config("repair").method_overrides.failure_diffusion)
    assert composed_config(base + spelled_out) == composed_config(base)
    assert composed_config(base + ("data.synthetic_repeat=1",)) != composed_config(base)  # the check can fail
    variants = ("waves", "capped", "probes", "neighbours", "neighbours_extra", "score", "steps14", "untrimmed", "mixed",
                "covered", "covered_generate")
    for variant in variants:  # the variants measured against it are not today's defaults
        assert composed_config(base + tuple(load_config(variant).method_overrides.failure_diffusion)) != \
            composed_config(base), variant


def test_quick_discovery_capture_reproduces_the_runs_modes_and_scores_variants(tmp_path):
    env = dict(os.environ, BLINDSPOT_RESULTS=str(tmp_path), PYTHONPATH=str(ROOT), WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.discovery_worlds", "--quick", "--workers", "1", "--out",
                           str(tmp_path / "captures"), "--variant", "nbh=discovery=neighbourhoods",
                           "--variant", "whole=loop.trim_covered=null",
                           "--variant", "score=loop.rank_by=score,loop.trim_covered=null"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((tmp_path / "discovery_worlds_quick.json").read_text())
    defaults, nbh, whole, by_score_alone = result["variants"]
    assert (defaults["name"], nbh["overrides"]) == ("defaults", ["discovery=neighbourhoods"])
    assert defaults["summary"]["same_modes_as_the_run"]  # re-scoring today's settings gives the run's own round
    (star,) = defaults["slices"]
    assert star["group"] == "star|grass" and 0 <= star["val_errors"] <= star["val_samples"] > 0
    assert all(m.startswith(("star", "cross", "circle", "square", "triangle", "heart")) for m in nbh["slices"][0]["modes"])
    assert len(list((tmp_path / "captures").glob("default/*/capture.pt"))) == 1
    # every handed mode carries its training coverage, and the re-rankings keep the handed set
    cover = star["coverage"]
    assert cover and all(0 <= c["coverage"] <= 1 and c["class"] in c["group"] for c in cover)
    assert set(defaults["reranked"]) == {"least_covered", "score_x_uncovered"}
    assert all(r["handed"] == star["handed"] for r in star["reranked"].values())
    # the default ranks by training coverage in the loop itself (the capture's training embeddings): each handed
    # mode's score is its slice score (rank_by=score) x (1 - coverage), seen on whole modes (not cut to the uncovered)
    assert by_score_alone["overrides"] == ["loop.rank_by=score", "loop.trim_covered=null"]
    by_score = {(c["class"], c["group"], c["support"]): c["score"] for c in by_score_alone["slices"][0]["coverage"]}
    rescored = [(c, by_score[(c["class"], c["group"], c["support"])]) for c in whole["slices"][0]["coverage"]
                if (c["class"], c["group"], c["support"]) in by_score]
    assert rescored and all(c["score"] == pytest.approx(s * (1 - c["coverage"])) for c, s in rescored)
    assert "## Training coverage of the handed modes" in (tmp_path / "discovery_worlds_quick.md").read_text()



def suite_plan(overrides, out):
    """The default suite config's jobs with these overrides."""
    from benchmarks.suite import build_worlds, load_config, plan

    cfg = load_config("default", overrides)
    return plan(cfg, *build_worlds(cfg), out)


def test_loop_methods_start_from_the_erm_runs_checkpoint_of_the_epoch_before_their_first_round(tmp_path):
    from benchmarks.suite import with_baselines

    jobs = suite_plan(["worlds.n_worlds=2"], tmp_path)
    erm = {j.world: j for j in jobs if j.method == "none"}
    assert all("callbacks.model_checkpoint_keep.every_n_epochs=4" in j.args for j in erm.values())
    for job in jobs:
        if job.method in ("failure_diffusion", "untargeted_diffusion", "retrieval"):  # start_epoch 5: ERM's epoch 4
            assert job.after is erm[job.world] and job.branch_epoch == 4
            assert f"ckpt_path={erm[job.world].out / 'checkpoints' / 'keep_epoch_003.ckpt'}" in job.args
        else:
            assert job.after is None and not any(a.startswith("ckpt_path=") for a in job.args), job.method
    fd = [j for j in jobs if j.method == "failure_diffusion"]
    assert with_baselines(fd) == fd + [erm[j.world] for j in fd]  # filtered to one method, ERM still comes
    assert not any(j.after for j in suite_plan(["worlds.n_worlds=2", "branch=false"], tmp_path))
    changed = suite_plan(["worlds.n_worlds=2", "+method_overrides.retrieval=['model.optimizer.lr=0.01']"], tmp_path)
    assert {j.method for j in changed if j.after} == {"failure_diffusion", "untargeted_diffusion"}  # retrieval:
    # another learning rate, so its epochs before the loop are not ERM's


def test_a_run_waits_for_the_erm_run_it_starts_from_and_fails_with_it(tmp_path, monkeypatch):
    from benchmarks import suite

    jobs = suite_plan(["worlds.n_worlds=1"], tmp_path)
    started = []

    def fake_run(job, threads=None):
        started.append(job.method)
        if job.method == "none":
            time.sleep(0.3)  # meanwhile the other worker must wait, not start a run that branches from it
            raise RuntimeError("ERM broke")
        return {"metrics": {"test": {}}}

    monkeypatch.setattr(suite, "run_job", fake_run)
    errors, _ = suite.run_all(jobs, workers=2)
    assert started[0] == "none" and sorted(started) == ["ceiling", "none"]
    assert {k[1] for k in errors} == {"none", "failure_diffusion", "untargeted_diffusion", "retrieval"}
    assert "which failed" in errors[("default", "retrieval", 0)]
