"""README figures: the built-in world as a labelled grid (one row per class, one column per background).

    python -m benchmarks.figures        # -> docs/world_grid.png
"""

from __future__ import annotations

from pathlib import Path

from blindspot.world.dataset import Planted, SplitSizes, build_split, planted_slices
from blindspot.world.spec import WorldSpec

ROOT = Path(__file__).resolve().parents[1]


def world_grid(path: Path, per_cell: int = 2) -> None:
    """A labelled grid of test-split images with their ground-truth groups, planted blind spots marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(ROOT / "conf" / "data" / "world.yaml")
    spec = WorldSpec()
    planted = [Planted(**p) for p in OmegaConf.to_container(cfg.planted)]
    split = build_split(spec, planted, "test", SplitSizes(test_per_group=per_cell), seed=0)
    rare = {p["group"] for p in planted_slices(spec, planted)}
    fig, axes = plt.subplots(len(spec.classes), len(spec.backgrounds) * per_cell,
                             figsize=(len(spec.backgrounds) * per_cell * 0.9, len(spec.classes) * 1.0))
    for ci, c in enumerate(spec.classes):
        for bi, b in enumerate(spec.backgrounds):
            idx = ((split.labels == ci) & (split.attributes["background"] == bi)).nonzero().flatten()[:per_cell]
            for k, i in enumerate(idx.tolist()):
                ax = axes[ci, bi * per_cell + k]
                ax.imshow(split.images[i].permute(1, 2, 0).numpy(), interpolation="nearest")
                ax.set_xticks([]), ax.set_yticks([])
                if f"{c}|{b}" in rare:
                    for side in ax.spines.values():
                        side.set_edgecolor("red"), side.set_linewidth(2.5)
                if ci == 0 and k == 0:
                    ax.set_title(b, fontsize=9, loc="left")
                if bi == 0 and k == 0:
                    ax.set_ylabel(c, fontsize=9)
    fig.suptitle("The built-in world (test split; red: the planted blind spot, rare in training)", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    world_grid(ROOT / "docs" / "world_grid.png")
