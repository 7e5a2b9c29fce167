"""The file-backed datamodules (metadata CSV, image folders) on small image trees written by the tests."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from PIL import Image

from blindspot.images import UnreadableImageError
from datamodules.files import stratified_split
from datamodules.image_folder import ImageFolderDataModule
from datamodules.metadata_csv import MetadataCSVDataModule

SIZE = 12  # image_size the tests ask for (the files themselves are 8x8 or 10x6)
GROUPS = ["landbird|place=land", "landbird|place=water", "waterbird|place=land", "waterbird|place=water"]


def _png(path: Path, shade: int, size: tuple[int, int] = (8, 8)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (shade % 256, (3 * shade) % 256, 128)).save(path)
    return str(path)


def _corrupt(path: Path) -> None:
    path.write_bytes(b"\x89PNG\r\n\x1a\nthis is not an image")


def waterbirds(root: Path, per_cell: int = 3) -> list[dict]:
    """A Waterbirds-like tree: root/metadata.csv + root/<species>/<img>.png, 2 labels x 2 places x 3 splits."""
    rows = []
    for split in (0, 1, 2):
        for y in (0, 1):
            for place in (0, 1):
                for k in range(per_cell):
                    i = len(rows)
                    name = f"{'land' if y == 0 else 'water'}bird_{i:03d}/img_{i}.png"
                    _png(root / name, i, size=(10, 6))
                    rows.append({"img_id": i, "img_filename": name, "y": y, "split": split, "place": place,
                                 "place_filename": f"/x/{place}.jpg"})
    _write_csv(root / "metadata.csv", rows)
    return rows


def _write_csv(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def folders(root: Path, classes=("cat", "dog", "owl"), per_class: int = 10, splits: dict | None = None) -> None:
    """root/<class>/*.png, or root/<split>/<class>/*.png when `splits` gives images per class per split."""
    for split, n in (splits or {"": per_class}).items():
        for c, cls in enumerate(classes):
            for k in range(n):
                _png(root / split / cls / f"{k}.{'png' if k % 2 else 'PNG'}", 40 * c + k)


def csv_dm(root: Path, **kw) -> MetadataCSVDataModule:
    args = dict(class_names=["landbird", "waterbird"], value_names={"place": {0: "land", 1: "water"}},
                image_size=SIZE, batch_size=8, verify_cache_dir=None)
    return MetadataCSVDataModule(None if root is None else str(root), **{**args, **kw})


def folder_dm(root: Path, **kw) -> ImageFolderDataModule:
    args = dict(image_size=SIZE, batch_size=8, verify_cache_dir=None)
    return ImageFolderDataModule(None if root is None else str(root), **{**args, **kw})


# --- metadata CSV -------------------------------------------------------------------------------------------------
def test_metadata_csv_splits_labels_and_groups(tmp_path):
    rows = waterbirds(tmp_path)
    dm = csv_dm(tmp_path)
    assert dm.class_names == ["landbird", "waterbird"] and dm.num_classes == 2  # known before setup (train.py)
    assert dm.group_names == GROUPS
    dm.setup("fit")
    for split, ds in zip((0, 1, 2), (dm.train_set, dm.val_set, dm.test_set)):
        expected = [r for r in rows if r["split"] == split]
        assert ds.paths == [str(tmp_path / r["img_filename"]) for r in expected]
        assert ds.labels.tolist() == [r["y"] for r in expected]
        assert ds.groups.tolist() == [2 * r["y"] + r["place"] for r in expected]
    assert torch.bincount(dm.train_set.groups).tolist() == [3, 3, 3, 3]
    assert dm.skipped_images == 0


def test_metadata_csv_derived_names_string_splits_and_no_groups(tmp_path):
    rows = [{"file": f"im/{i}.png", "animal": ["dog", "cat"][i % 2], "part": ["tr", "va", "te", "extra"][i % 4]}
            for i in range(16)]
    for i, r in enumerate(rows):
        _png(tmp_path / r["file"], i)
    _write_csv(tmp_path / "labels.csv", rows)
    dm = MetadataCSVDataModule(str(tmp_path), metadata="labels.csv", filename_column="file", label_column="animal",
                               split_column="part", split_values={"train": "tr", "val": ["va"], "test": "te"},
                               group_columns=[], class_names=None, value_names=None, image_size=SIZE,
                               verify_cache_dir=None)
    dm.setup()
    assert dm.class_names == ["cat", "dog"] and dm.group_names == []
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (4, 4, 4)  # the "extra" rows are ignored
    assert dm.train_set.labels.tolist() == [1, 1, 1, 1]  # rows 0, 4, 8, 12 are dogs
    assert set(dm.val_set.groups.tolist()) == {-1}


def test_metadata_csv_without_split_column_carves_stratified_splits(tmp_path):
    waterbirds(tmp_path, per_cell=5)  # 60 rows, 30 per class
    dm = csv_dm(tmp_path, split_column=None, val_fraction=0.2, test_fraction=0.1, seed=3)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (42, 12, 6)
    assert torch.bincount(dm.val_set.labels).tolist() == [6, 6]
    assert not set(dm.train_set.paths) & (set(dm.val_set.paths) | set(dm.test_set.paths))


# --- image folders --------------------------------------------------------------------------------------------------
def test_image_folder_flat_tree_gets_a_seeded_stratified_split(tmp_path):
    folders(tmp_path)
    dm = folder_dm(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert dm.class_names == ["cat", "dog", "owl"] and dm.num_classes == 3 and dm.group_names == []
    dm.setup()
    sets = (dm.train_set, dm.val_set, dm.test_set)
    assert [len(s) for s in sets] == [18, 6, 6]
    assert [torch.bincount(s.labels).tolist() for s in sets] == [[6, 6, 6], [2, 2, 2], [2, 2, 2]]
    assert all(Path(p).parent.name == dm.class_names[y] for s in sets for p, y in zip(s.paths, s.labels.tolist()))
    assert len(set().union(*(s.paths for s in sets))) == 30  # disjoint and complete (both .png and .PNG found)
    again, other = folder_dm(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=1), folder_dm(
        tmp_path, val_fraction=0.2, test_fraction=0.2, seed=2)
    again.setup()
    other.setup()
    assert again.val_set.paths == dm.val_set.paths and other.val_set.paths != dm.val_set.paths
    assert set(dm.train_set.groups.tolist()) == {-1}


def test_image_folder_split_folders_and_a_missing_test_folder(tmp_path):
    folders(tmp_path, splits={"train": 6, "val": 2, "test": 3})
    dm = folder_dm(tmp_path)
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [18, 6, 9]
    assert all("/val/" in p for p in dm.val_set.paths)
    assert dm.val_set.labels.tolist() == [0, 0, 1, 1, 2, 2]

    no_test = tmp_path / "no_test"
    folders(no_test, splits={"train": 10, "val": 2})
    dm = folder_dm(no_test, test_fraction=0.3)
    dm.setup()
    assert [len(s) for s in (dm.train_set, dm.val_set, dm.test_set)] == [21, 6, 9]
    assert all("/train/" in p for p in dm.test_set.paths)


def test_stratified_split_keeps_class_shares():
    parts = stratified_split([0] * 10 + [1] * 20, [0.1, 0.2], seed=0)
    assert [parts[:10].count(k) for k in (0, 1, 2)] == [7, 1, 2]
    assert [parts[10:].count(k) for k in (0, 1, 2)] == [14, 2, 4]


# --- the batch contract and the synthetic pool ---------------------------------------------------------------------
@pytest.fixture(params=["metadata_csv", "image_folder"])
def make_dm(request, tmp_path):
    """A factory of one kind of datamodule over a small tree (called twice to test a resume)."""
    if request.param == "metadata_csv":
        waterbirds(tmp_path / "data")
        return lambda: csv_dm(tmp_path / "data")
    folders(tmp_path / "data", per_class=8)
    return lambda: folder_dm(tmp_path / "data", val_fraction=0.25, test_fraction=0.25)


def test_dataloaders_yield_the_batch_contract(make_dm):
    dm = make_dm()
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        batch = next(iter(loader))
        assert set(batch) == {"image", "label", "group", "index", "weight"}
        assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3, SIZE, SIZE)
        n = len(batch["image"])
        assert batch["label"].shape == batch["group"].shape == batch["index"].shape == batch["weight"].shape == (n,)
        assert ((0 <= batch["label"]) & (batch["label"] < dm.num_classes)).all()
        assert (batch["weight"] == 1).all()
    assert dm.val_images([0, 1]).shape == (2, 3, SIZE, SIZE)


def test_synthetic_pool_is_concatenated_and_survives_state_dict(make_dm, tmp_path):
    dm = make_dm()
    dm.setup()
    n_train = len(dm.train_set)
    paths = [_png(tmp_path / "generated" / f"{k}.png", 200 + k) for k in range(3)]
    added = dm.add_samples([{"path": p, "label": 1, "prompt": "a bird on water", "round": 0} for p in paths])
    assert added == 3 and dm.add_samples([{"path": paths[0], "label": 1}]) == 0
    dataset = dm.train_dataloader().dataset
    assert len(dataset) == n_train + 3
    extra = [dataset[n_train + k] for k in range(3)]
    assert [x["index"] for x in extra] == [n_train, n_train + 1, n_train + 2] and {x["label"] for x in extra} == {1}
    assert extra[0]["image"].shape == (3, SIZE, SIZE)

    dm.set_sample_weights({0: 5.0})
    fresh = make_dm()  # a resumed run: same config, state from the checkpoint
    fresh.setup()
    fresh.load_state_dict(dm.state_dict())
    assert [r["path"] for r in fresh.synthetic] == paths and fresh.synthetic[0]["prompt"] == "a bird on water"
    assert len(fresh.train_dataloader().dataset) == n_train + 3 and fresh.train_set.weights[0] == 5.0


# --- bad inputs -----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [csv_dm, folder_dm])
def test_missing_root_names_the_key(make, tmp_path):
    for root in (tmp_path / "nowhere", None):
        with pytest.raises(FileNotFoundError, match=r"data\.root=.*set data\.root="):
            make(root).setup()


def test_metadata_csv_missing_file_or_column_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"no metadata CSV at .*metadata\.csv; set data\.metadata"):
        csv_dm(tmp_path).setup()
    waterbirds(tmp_path)
    with pytest.raises(ValueError, match=r"no column 'background' \(set by data\.group_columns\).*'place'"):
        csv_dm(tmp_path, group_columns=["background"]).class_names
    with pytest.raises(ValueError, match=r"no column 'label' \(set by data\.label_column\)"):
        csv_dm(tmp_path, label_column="label").setup()
    with pytest.raises(ValueError, match=r"do not fit data\.class_names"):
        csv_dm(tmp_path, class_names=["only_one"]).setup()
    with pytest.raises(ValueError, match=r"no images in the val/test split.*data\.split_values"):
        csv_dm(tmp_path, split_values={"train": [0, 5], "val": 7, "test": 9}).setup()


def test_metadata_csv_missing_image_errors_or_is_skipped(tmp_path, caplog):
    rows = waterbirds(tmp_path)
    gone = tmp_path / rows[13]["img_filename"]  # a val image
    gone.unlink()
    with pytest.raises(UnreadableImageError, match=rf"1 of 36 images.*{gone.name} \(file not found\).*"
                                                   r"data\.on_bad_image=skip"):
        csv_dm(tmp_path).setup()
    dm = csv_dm(tmp_path, on_bad_image="skip", verify_images=False)  # existence is checked even without decoding
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.skipped_images == 1 and dm.bad_images[0][0] == str(gone)
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 11, 12)
    assert "skipping 1 of 36 images" in caplog.text


@pytest.mark.parametrize("kind", ["metadata_csv", "image_folder"])
def test_undecodable_image_errors_or_is_skipped(kind, tmp_path, caplog):
    if kind == "metadata_csv":
        rows = waterbirds(tmp_path)
        bad, make = tmp_path / rows[0]["img_filename"], csv_dm
    else:
        folders(tmp_path)
        bad, make = tmp_path / "dog" / "3.png", folder_dm
    _corrupt(bad)
    with pytest.raises(UnreadableImageError, match=rf"{bad.name} \(.*\).*set data\.on_bad_image=skip"):
        make(tmp_path).setup()
    make(tmp_path, verify_images=False).setup()  # no decoding at setup: the bad file is not noticed
    dm = make(tmp_path, on_bad_image="skip")
    with caplog.at_level(logging.WARNING):
        dm.setup()
    assert dm.skipped_images == 1 and str(bad) not in dm.train_set.paths + dm.val_set.paths + dm.test_set.paths
    assert "skipping 1 of" in caplog.text and str(bad) in caplog.text
    with pytest.raises(ValueError, match=r"data\.on_bad_image='ignore'"):
        make(tmp_path, on_bad_image="ignore")


def test_verification_is_cached_by_file_fingerprint(tmp_path):
    rows = waterbirds(tmp_path / "data")
    bad = tmp_path / "data" / rows[5]["img_filename"]
    _corrupt(bad)
    cache = tmp_path / "cache"
    dm = csv_dm(tmp_path / "data", on_bad_image="skip", verify_cache_dir=str(cache))
    dm.setup()
    assert dm.skipped_images == 1 and len(list(cache.glob("*.json"))) == 1
    again = csv_dm(tmp_path / "data", on_bad_image="skip", verify_cache_dir=str(cache))
    again.setup()  # answered from the cache
    assert again.bad_images == dm.bad_images
    _png(bad, 7)  # repaired: the fingerprint changes, so the images are checked again
    fixed = csv_dm(tmp_path / "data", verify_cache_dir=str(cache))
    fixed.setup()
    assert fixed.skipped_images == 0 and len(list(cache.glob("*.json"))) == 2


def test_image_folder_without_class_folders_says_what_it_expects(tmp_path):
    (tmp_path / "empty_class").mkdir()
    _png(tmp_path / "loose.png", 1)
    with pytest.raises(FileNotFoundError, match=r"no class folders with images in .*<class>/<image>"):
        folder_dm(tmp_path).setup()


# --- the configs ----------------------------------------------------------------------------------------------------
@pytest.fixture
def compose_data():
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from blindspot.runtime import register_resolvers

    register_resolvers()

    def _compose(overrides: list[str]):
        with initialize_config_dir(config_dir="/work/main/conf", version_base="1.3"):
            return compose(config_name="train", overrides=overrides)

    yield _compose
    GlobalHydra.instance().clear()


def test_configs_instantiate(compose_data, tmp_path):
    import hydra

    waterbirds(tmp_path / "wb")
    folders(tmp_path / "folders", splits={"train": 4, "val": 2, "test": 2})
    common = ["data.image_size=16", "data.num_workers=0", f"data.verify_cache_dir={tmp_path / 'cache'}", "seed=5"]
    cfg = compose_data(["data=metadata_csv", f"data.root={tmp_path / 'wb'}", *common])
    dm = hydra.utils.instantiate(cfg.data)
    assert isinstance(dm, MetadataCSVDataModule) and dm.seed == 5
    assert dm.group_names == GROUPS and dm.class_names == ["landbird", "waterbird"]
    dm.setup()
    assert len(dm.train_set) == 12 and next(iter(dm.val_dataloader()))["image"].shape[-1] == 16

    cfg = compose_data(["data=image_folder", f"data.root={tmp_path / 'folders'}", *common])
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup()
    assert isinstance(dm, ImageFolderDataModule) and dm.class_names == ["cat", "dog", "owl"]
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (12, 6, 6)


@pytest.mark.parametrize("name", ["metadata_csv", "image_folder"])
def test_configs_require_root(compose_data, name):
    from omegaconf.errors import MissingMandatoryValue
    import hydra

    cfg = compose_data([f"data={name}"])
    with pytest.raises(MissingMandatoryValue, match=r"data\.root"):
        hydra.utils.instantiate(cfg.data)
