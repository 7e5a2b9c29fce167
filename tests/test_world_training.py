"""The world training scripts: tiny runs train, resume exactly and export loadable models; provenance records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

CONF = Path(__file__).resolve().parents[1] / "conf" / "world"
TINY_UNET = ["unet.block_out_channels=[32,32]", "unet.down_block_types=[DownBlock2D,CrossAttnDownBlock2D]",
             "unet.up_block_types=[CrossAttnUpBlock2D,UpBlock2D]", "unet.norm_num_groups=8"]


def diffusion_cfg(tmp_path: Path, steps: int, *extra: str, config: str = "train_diffusion"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=[
            *TINY_UNET, f"steps={steps}", "batch_size=4", "warmup=1", "threads=1", "sample_every=1000", "sample_steps=2",
            f"work_dir={tmp_path / 'work'}", f"out_dir={tmp_path / 'out'}", *extra])


def straight_and_killed_then_resumed(script, make_cfg, tmp_path: Path, monkeypatch, steps: int = 3):
    """Train `steps` in one go and, separately, killed before step 3 then resumed; return both final states."""
    script.train(make_cfg(tmp_path / "straight", steps))
    real_batch, calls = script.corpus_batch, []

    def dies_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_batch(*args, **kwargs)

    monkeypatch.setattr(script, "corpus_batch", dies_at_step_3)
    with pytest.raises(KeyboardInterrupt):
        script.train(make_cfg(tmp_path / "resumed", steps, "checkpoint_minutes=0"))
    assert torch.load(tmp_path / "resumed" / "work" / "state.pt", weights_only=False)["step"] == 2
    monkeypatch.setattr(script, "corpus_batch", real_batch)
    script.train(make_cfg(tmp_path / "resumed", steps))
    return tuple(torch.load(tmp_path / run / "work" / "state.pt", weights_only=False) for run in ("straight", "resumed"))


def test_diffusion_training_resumes_exactly_and_exports_a_pipeline(tmp_path, monkeypatch):
    """A run killed after step 2 (state saved every step) and resumed ends with the weights of an unkilled run."""
    from diffusers import AutoPipelineForText2Image

    from blindspot.world import train_diffusion

    a, b = straight_and_killed_then_resumed(train_diffusion, diffusion_cfg, tmp_path, monkeypatch)
    assert a["step"] == b["step"] == 3
    for key, value in a["unet"].items():
        assert torch.equal(value, b["unet"][key]), key
    pipe = AutoPipelineForText2Image.from_pretrained(tmp_path / "straight" / "out", dtype=torch.float32)
    out = pipe(["a star on grass"], num_inference_steps=2, height=32, width=32, output_type="pt",
               generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (1, 3, 32, 32) and torch.isfinite(out).all()
    assert (tmp_path / "straight" / "out" / "training.json").is_file()


def test_the_second_stage_continues_the_first_in_place_and_keeps_its_record(tmp_path):
    """train_diffusion_continue starts from the first stage's pipeline folder, overwrites it, sums the wall time."""
    import json

    from blindspot.world import train_diffusion

    train_diffusion.train(diffusion_cfg(tmp_path, 2))
    first = json.loads((tmp_path / "out" / "training.json").read_text())
    cfg = diffusion_cfg(tmp_path, 1, f"init_from={tmp_path / 'out'}", f"work_dir={tmp_path / 'work2'}",
                        config="train_diffusion_continue")
    assert cfg.lr == 1.0e-4 and cfg.unet.block_out_channels == [32, 32]  # its own knobs over stage 1's
    train_diffusion.train(cfg)
    second = json.loads((tmp_path / "out" / "training.json").read_text())
    assert second["steps"] == 1 and second["previous_stages"] == [first]
    assert second["total_wall_minutes"] == pytest.approx(first["wall_minutes"] + second["wall_minutes"], abs=0.02)
    train_diffusion.train(cfg)  # run again when already finished: re-exports, and the record does not chain itself
    again = json.loads((tmp_path / "out" / "training.json").read_text())
    assert again["previous_stages"] == [first]  # (its minutes add only the re-export's few seconds)
    assert again["total_wall_minutes"] == pytest.approx(second["total_wall_minutes"], abs=0.02)


def write_checkpoint(folder: Path, scale: float, wall_minutes: float) -> None:
    import json

    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    save_file({"w": torch.ones(3, 4) * scale, "b": torch.ones(4) * scale}, str(folder / "model.safetensors"))
    (folder / "training.json").write_text(json.dumps({
        "checkpoint": "model.safetensors", "date": "2026-12-01 10:00:00", "command": "python -m x", "steps": 5,
        "batch_size": 2, "wall_minutes": wall_minutes, "metrics": {"acc": 0.9}, "machine": {"cpu_count": 2}}))


def test_a_rerun_is_recorded_beside_the_shipped_provenance(tmp_path):
    """The re-run's time, metrics and relative weight distance are appended; the shipped record stays as it was."""
    import json

    from benchmarks.world_models import training_minutes
    from blindspot.world.reproduction import record

    write_checkpoint(tmp_path / "shipped", 1.0, wall_minutes=70.0)
    write_checkpoint(tmp_path / "rerun", 1.1, wall_minutes=12.0)
    assert training_minutes(tmp_path / "shipped")["minutes"] == 70.0
    entry = record(tmp_path / "shipped", tmp_path / "rerun")
    assert entry["relative_weight_distance"] == pytest.approx(0.1, abs=1e-6)
    assert not entry["bitwise_identical"]
    saved = json.loads((tmp_path / "shipped" / "training.json").read_text())
    assert saved["wall_minutes"] == 70.0 and saved["reproductions"] == [entry]
    minutes = training_minutes(tmp_path / "shipped")  # the budget is judged on the shipped run, the re-run beside it
    assert minutes["minutes"] == 70.0 and "shipped" in minutes["measured_by"]
    assert minutes["rerun_minutes"] == 12.0 and minutes["rerun_date"] == entry["date"][:10]


def test_a_rerun_of_another_model_is_refused(tmp_path):
    from safetensors.torch import save_file

    from blindspot.world.reproduction import record

    write_checkpoint(tmp_path / "shipped", 1.0, wall_minutes=70.0)
    write_checkpoint(tmp_path / "rerun", 1.0, wall_minutes=12.0)
    save_file({"other": torch.ones(2)}, str(tmp_path / "rerun" / "model.safetensors"))
    with pytest.raises(ValueError, match="different tensors"):
        record(tmp_path / "shipped", tmp_path / "rerun")


def clip_cfg(tmp_path: Path, steps: int, *extra: str):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train_clip", overrides=[
            f"steps={steps}", "batch_size=8", "warmup=1", "threads=1", "eval_every=1000", "eval_images=12",
            f"work_dir={tmp_path / 'work'}", f"out_dir={tmp_path / 'out'}", *extra])


def test_clip_training_resumes_exactly_and_exports_a_loadable_checkpoint(tmp_path, monkeypatch):
    """A CLIP run killed after step 2 and resumed ends with the weights of an unkilled run; open_clip loads the export."""
    import json

    from blindspot.clip import load_clip
    from blindspot.world import train_clip

    a, b = (state["model"] for state in straight_and_killed_then_resumed(train_clip, clip_cfg, tmp_path, monkeypatch))
    for key, value in a.items():
        assert torch.equal(value, b[key]), key
    exported = tmp_path / "straight" / "out" / "open_clip_model.safetensors"
    clip = load_clip("blindspot-world-clip", pretrained=str(exported))
    assert clip.encode_texts(["a star on grass"]).shape[-1] == 128
    assert json.loads((tmp_path / "straight" / "out" / "training.json").read_text())["steps"] == 3
