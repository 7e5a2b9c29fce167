"""Benchmark runs are reused only while their saved settings are what today's conf/ composes."""

import pytest
from omegaconf import OmegaConf, open_dict

from benchmarks.runs import RunInUseError, claimed, compose_train, composed_config, is_current, retire

ARGS = ["experiment=compare", "+augment=none", "seed=0", "logger=csv", "trainer.max_epochs=3"]


def _saved_run(tmp_path, args, edit=None):
    """A run folder holding the config Hydra would have saved for `args` (optionally edited): as written, unresolved."""
    cfg = compose_train(args)
    if edit:
        edit(cfg)
    (tmp_path / "run" / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, tmp_path / "run" / ".hydra" / "config.yaml")
    return tmp_path / "run"


def test_a_run_with_todays_settings_is_current(tmp_path):
    out = _saved_run(tmp_path, ARGS)
    assert is_current(out, ARGS + [f"hydra.run.dir={out}"])


def test_a_resumed_run_is_still_current(tmp_path):
    out = _saved_run(tmp_path, ARGS, edit=lambda c: OmegaConf.update(c, "resume", str(tmp_path / "run")))
    assert is_current(out, ARGS)


def test_a_changed_default_makes_the_run_stale(tmp_path):
    out = _saved_run(tmp_path, ARGS, edit=lambda c: OmegaConf.update(c, "data.synthetic_repeat", 7))
    assert not is_current(out, ARGS)
    assert not is_current(_saved_run(tmp_path / "b", ARGS), ARGS[:-1] + ["trainer.max_epochs=4"])


def test_a_group_the_run_does_not_use_cannot_make_it_stale(tmp_path):
    """ERM has the generator in its config but never loads it; a generating method does."""
    generator_changed = lambda c: OmegaConf.update(c, "generator.num_inference_steps", 99)  # noqa: E731
    erm = _saved_run(tmp_path / "erm", ARGS, edit=generator_changed)
    assert is_current(erm, ARGS)
    generating = [a.replace("+augment=none", "+augment=failure_diffusion") for a in ARGS]
    assert not is_current(_saved_run(tmp_path / "fd", generating, edit=generator_changed), generating)


def test_a_knob_written_down_later_at_the_codes_value_leaves_older_runs_current(tmp_path):
    """Runs saved before conf/ spelled out remedy.covered_members (SPELLED_OUT) read it as the code's "drop"."""
    generating = [a.replace("+augment=none", "+augment=failure_diffusion") for a in ARGS]

    def saved_before(c):
        for node in (c.remedy, c.remedy.prompts):
            with open_dict(node):
                node.pop("covered_members", None)
                node.pop("members_fraction", None)

    older = _saved_run(tmp_path / "older", generating, edit=saved_before)
    assert "covered_members" not in (older / ".hydra" / "config.yaml").read_text()
    assert is_current(older, generating)
    assert not is_current(older, generating + ["remedy.covered_members=neighbours"])  # not what it ran
    assert not is_current(older, generating + ["remedy.prompts.members_fraction=0.25"])


def test_a_folder_without_a_saved_config_is_not_judged(tmp_path):
    assert is_current(tmp_path / "never-ran", ARGS)


def test_retire_keeps_the_old_run(tmp_path):
    out = _saved_run(tmp_path, ARGS)
    (out / "report.json").write_text("{}")
    moved = retire(out)
    assert not out.exists() and (moved / "report.json").read_text() == "{}"
    assert moved.name.startswith("run.stale-")


def test_a_folder_being_run_cannot_be_claimed_twice(tmp_path):
    out = tmp_path / "run"
    with claimed(out):
        with pytest.raises(RunInUseError, match="being run by another process"):
            with claimed(out):
                pass
    with claimed(out):  # released when the first run ends
        pass


def test_sweep_threads_can_compose_at_the_same_time():
    """benchmarks.compare/suite judge runs from several worker threads; Hydra's compose state is global."""
    from concurrent.futures import ThreadPoolExecutor

    composed_config.cache_clear()
    args = [tuple(ARGS[:-1] + [f"trainer.max_epochs={e}"]) for e in range(4, 10)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        configs = list(pool.map(composed_config, args))
    assert [OmegaConf.create(c).trainer.max_epochs for c in configs] == list(range(4, 10))
