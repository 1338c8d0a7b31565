"""Dataset loading: real MedMNIST files, synthetic .npz, image folders, CSV manifests, errors."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from med_core.config import DataConfig
from med_core.data import DatasetInfo
from med_core.data import default_data_dir
from med_core.data import load_dataset
from med_core.data import stratified_split
from med_core.exceptions import DataError

# Numbers from /work/shared/data/medmnist/README.md.
README = {
    "breastmnist": dict(
        task="binary",
        chans=1,
        size=(28, 28),
        n=(546, 78, 156),
        counts=({0: 147, 1: 399}, {0: 21, 1: 57}, {0: 42, 1: 114}),
        classes=("malignant", "normal, benign"),
    ),
    "retinamnist": dict(
        task="ordinal-regression",
        chans=3,
        size=(28, 28),
        n=(1080, 120, 400),
        counts=(
            {0: 486, 1: 128, 2: 206, 3: 194, 4: 66},
            {0: 54, 1: 12, 2: 28, 3: 20, 4: 6},
            {0: 174, 1: 46, 2: 92, 3: 68, 4: 20},
        ),
        classes=None,
    ),
    "adrenalmnist3d": dict(
        task="binary",
        chans=1,
        size=(28, 28, 28),
        n=(1188, 98, 298),
        counts=({0: 929, 1: 259}, {0: 76, 1: 22}, {0: 229, 1: 69}),
        classes=("normal", "hyperplasia"),
    ),
}


@pytest.mark.parametrize("name", sorted(README))
def test_real_medmnist_files_match_readme(name, request):
    ds = request.getfixturevalue(
        {"breastmnist": "breast", "retinamnist": "retina", "adrenalmnist3d": "adrenal"}[name]
    )
    want = README[name]
    info = ds.info
    assert info.name == name and info.task == want["task"]
    assert info.in_chans == want["chans"] and info.image_size == want["size"]
    assert info.spatial_dims == len(want["size"])
    assert info.num_classes == len(want["counts"][0])
    if want["classes"]:
        assert info.class_names == want["classes"]
    for split, n, counts in zip(("train", "val", "test"), want["n"], want["counts"], strict=True):
        s = ds.split(split)
        assert s.images.shape == (n, want["chans"], *want["size"])
        assert s.images.dtype == np.uint8 and s.images.flags["C_CONTIGUOUS"]
        assert s.labels.shape == (n,) and s.labels.dtype == np.int64
        assert ds.label_counts(split) == counts


def test_retina_channels_last_converted_exactly(retina, medmnist_dir):
    raw = np.load(medmnist_dir / "retinamnist.npz")["val_images"]  # (N, 28, 28, 3)
    np.testing.assert_array_equal(retina.val.images, raw.transpose(0, 3, 1, 2))


def test_adrenal_is_binary_mask_data(adrenal):
    from med_core.data import is_binary_mask_data

    assert is_binary_mask_data(adrenal.train.images)
    assert set(np.unique(adrenal.val.images)) == {0, 255}


def test_name_lookup_uses_env_var_when_no_dir_given(data_dir_env):
    assert default_data_dir() == data_dir_env
    ds = load_dataset("breastmnist")
    assert ds.info.source == str(data_dir_env / "breastmnist.npz")


def test_default_data_dir_without_env(monkeypatch):
    monkeypatch.delenv("MEDAUTO_DATA_DIR", raising=False)
    assert default_data_dir() == Path("~/.medmnist").expanduser()


def test_load_by_path_and_by_config(medmnist_dir):
    by_path = load_dataset(str(medmnist_dir / "breastmnist.npz"))
    by_cfg = load_dataset(DataConfig(dataset="breastmnist", data_dir=str(medmnist_dir)))
    assert by_path.info == by_cfg.info
    np.testing.assert_array_equal(by_path.test.images, by_cfg.test.images)


def test_train_on_val_concatenates(medmnist_dir, breast):
    ds = load_dataset(
        DataConfig(dataset="breastmnist", data_dir=str(medmnist_dir), train_on_val=True)
    )
    assert len(ds.train) == len(breast.train) + len(breast.val)
    np.testing.assert_array_equal(ds.train.images[len(breast.train) :], breast.val.images)
    assert len(ds.val) == len(breast.val)


def test_size_variant_name_parsed(tmp_path, make_npz):
    make_npz(tmp_path / "pneumoniamnist_64.npz", shape=(64, 64))
    ds = load_dataset("pneumoniamnist_64", data_dir=tmp_path)
    assert ds.info.image_size == (64, 64) and ds.info.class_names == ("normal", "pneumonia")


def test_known_multilabel_subset(tmp_path, make_npz):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, (6, 14)).astype(np.uint8)
    make_npz(tmp_path / "chestmnist.npz", labels=labels)
    ds = load_dataset("chestmnist", data_dir=tmp_path)
    assert ds.info.task == "multi-label" and ds.info.num_classes == 14
    assert ds.info.class_names[0] == "atelectasis"
    assert ds.train.labels.dtype == np.float32 and ds.train.labels.shape == (6, 14)
    np.testing.assert_array_equal(ds.train.labels, labels.astype(np.float32))


def test_unknown_npz_infers_multilabel(tmp_path, make_npz):
    labels = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], np.uint8)
    make_npz(tmp_path / "mine.npz", n=4, labels=labels)
    ds = load_dataset(str(tmp_path / "mine.npz"))
    assert ds.info.task == "multi-label" and ds.info.num_classes == 3
    assert ds.label_counts("train") == {0: 2, 1: 2, 2: 2}


def test_unknown_npz_infers_multiclass_rgb_and_3d(tmp_path, make_npz):
    labels = np.array([[0], [1], [2], [3], [1], [2]], np.uint8)
    make_npz(tmp_path / "rgb.npz", shape=(8, 8, 3), labels=labels)
    ds = load_dataset(str(tmp_path / "rgb.npz"))
    assert (ds.info.task, ds.info.num_classes, ds.info.in_chans) == ("multi-class", 4, 3)
    assert ds.train.images.shape == (6, 3, 8, 8)
    make_npz(tmp_path / "vol.npz", shape=(6, 8, 8))
    vol = load_dataset(str(tmp_path / "vol.npz"))
    assert (vol.info.task, vol.info.spatial_dims, vol.train.images.shape) == (
        "binary",
        3,
        (6, 1, 6, 8, 8),
    )


# ------------------------------------------------------------------ folders and CSV


def test_image_folder_stratified_split(tmp_path, make_folder):
    root = make_folder(tmp_path / "us", {"benign": 20, "malignant": 10})
    cfg = DataConfig(dataset=str(root), val_fraction=0.2, test_fraction=0.2)
    ds = load_dataset(cfg)
    info = ds.info
    assert (info.task, info.class_names, info.in_chans, info.image_size) == (
        "binary",
        ("benign", "malignant"),
        1,
        (8, 8),
    )
    assert ds.label_counts("train") == {0: 12, 1: 6}
    assert ds.label_counts("val") == {0: 4, 1: 2}
    assert ds.label_counts("test") == {0: 4, 1: 2}
    again = load_dataset(cfg)
    for s in ("train", "val", "test"):
        np.testing.assert_array_equal(ds.split(s).images, again.split(s).images)
    # every image appears in exactly one split
    all_imgs = np.concatenate([ds.split(s).images for s in ("train", "val", "test")])
    assert len({a.tobytes() for a in all_imgs}) == 30


def test_stratified_split_is_deterministic_and_seeded():
    labels = np.repeat(np.arange(3), [30, 20, 10])
    a = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    b = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=0)
    c = stratified_split(labels, val_fraction=0.1, test_fraction=0.2, seed=1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["test"], c["test"])
    assert np.bincount(labels[a["test"]]).tolist() == [6, 4, 2]
    assert np.bincount(labels[a["val"]]).tolist() == [3, 2, 1]
    assert sorted(np.concatenate(list(a.values())).tolist()) == list(range(60))


def test_image_folder_mixed_sizes_and_colour(tmp_path, make_folder, make_png):
    root = make_folder(tmp_path / "x", {"a": 4, "b": 4}, size=(8, 8))
    make_png(root / "a" / "big.png", size=(16, 12))  # odd one out → resized to the common 8×8
    make_png(root / "b" / "rgb.png", size=(8, 8), mode="RGB")  # one colour image → RGB
    ds = load_dataset(DataConfig(dataset=str(root), val_fraction=0.2, test_fraction=0.2))
    assert ds.info.in_chans == 3 and ds.info.image_size == (8, 8)
    ds16 = load_dataset(
        DataConfig(dataset=str(root), img_size=16, val_fraction=0.2, test_fraction=0.2)
    )
    assert ds16.train.images.shape[1:] == (3, 16, 16)


def test_image_folder_presplit_layout(tmp_path, make_folder):
    for s, k in (("train", 3), ("val", 2), ("test", 1)):
        make_folder(tmp_path / "d" / s, {"n": k, "p": k})
    ds = load_dataset(str(tmp_path / "d"))
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [6, 4, 2]
    assert ds.info.class_names == ("n", "p")


def test_csv_manifest_with_and_without_split(tmp_path, make_png):
    rows = []
    for i in range(12):
        make_png(tmp_path / "img" / f"{i}.png", value=i * 10)
        split = "train" if i < 8 else ("val" if i < 10 else "test")
        rows.append(f"img/{i}.png,{'cyst' if i % 2 else 'solid'},{split}")
    (tmp_path / "m.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
    ds = load_dataset(str(tmp_path / "m.csv"))
    assert ds.info.class_names == ("cyst", "solid")
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert ds.train.images[0, 0, 0, 0] == 0 and ds.val.images[0, 0, 0, 0] == 80
    (tmp_path / "n.csv").write_text(
        "path,label\n" + "\n".join(r.rsplit(",", 1)[0] for r in rows) + "\n"
    )
    ds2 = load_dataset(
        DataConfig(dataset=str(tmp_path / "n.csv"), val_fraction=0.2, test_fraction=0.2)
    )
    assert [len(ds2.split(s)) for s in ("train", "val", "test")] == [8, 2, 2]
    assert ds2.label_counts("val") == {0: 1, 1: 1}


# ------------------------------------------------------------------ bad inputs


def _missing_name(tmp_path, **_):
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _missing_array(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", val_labels=None)
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _label_out_of_range(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", labels=np.array([[0], [1], [2], [0], [1], [0]]))
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _label_bad_shape(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", train_labels=np.zeros((6, 2, 2), np.uint8))
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _image_float(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", dtype=np.float32)
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _image_bad_shape(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", test_images=np.zeros((6, 2, 3, 4, 5, 7), np.uint8))
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _count_mismatch(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist.npz", val_labels=np.zeros((5, 1), np.uint8))
    return dict(cfg="breastmnist", data_dir=tmp_path)


def _size_mismatch(tmp_path, make_npz, **_):
    make_npz(tmp_path / "breastmnist_64.npz", shape=(28, 28))
    return dict(cfg="breastmnist_64", data_dir=tmp_path)


def _corrupt_npz(tmp_path, **_):
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip archive")
    return dict(cfg=str(tmp_path / "junk.npz"))


def _empty_class(tmp_path, make_folder, **_):
    make_folder(tmp_path / "f", {"a": 5, "b": 5})
    (tmp_path / "f" / "c").mkdir()
    return dict(cfg=str(tmp_path / "f"))


def _corrupt_image(tmp_path, make_folder, **_):
    make_folder(tmp_path / "f", {"a": 5, "b": 5})
    (tmp_path / "f" / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    return dict(cfg=str(tmp_path / "f"))


def _too_few_to_stratify(tmp_path, make_folder, **_):
    make_folder(tmp_path / "f", {"common": 10, "rare": 2})
    return dict(cfg=str(tmp_path / "f"))


def _one_class(tmp_path, make_folder, **_):
    make_folder(tmp_path / "f", {"only": 10})
    return dict(cfg=str(tmp_path / "f"))


def _csv_no_label(tmp_path, make_png, **_):
    make_png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,diagnosis\na.png,x\n")
    return dict(cfg=str(tmp_path / "m.csv"))


def _csv_missing_image(tmp_path, make_png, **_):
    make_png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,x,train\nnope.png,y,train\n")
    return dict(cfg=str(tmp_path / "m.csv"))


def _csv_bad_split(tmp_path, make_png, **_):
    make_png(tmp_path / "a.png")
    (tmp_path / "m.csv").write_text("path,label,split\na.png,x,training\n")
    return dict(cfg=str(tmp_path / "m.csv"))


BAD_INPUTS = [
    (_missing_name, ["breastmnist.npz", "does not exist", "MEDAUTO_DATA_DIR", "offline"]),
    (_missing_array, ["missing array(s) ['val_labels']"]),
    (_label_out_of_range, ["[train]", "label 2 out of range [0, 1]"]),
    (_label_bad_shape, ["[train]", "labels must have shape (N,) or (N, 1)", "(6, 2, 2)"]),
    (_image_float, ["images must be uint8", "float32"]),
    (_image_bad_shape, ["[test]", "images must have shape", "(6, 2, 3, 4, 5, 7)"]),
    (_count_mismatch, ["[val]", "6 images but 5 labels"]),
    (_size_mismatch, ["the name says size 64", "(28, 28)"]),
    (_corrupt_npz, ["junk.npz", "not a readable .npz"]),
    (_empty_class, ["class folder", "/c'", "is empty"]),
    (_corrupt_image, ["cannot read image file", "broken.png"]),
    (_too_few_to_stratify, ["class 'rare' has 2 sample(s)", "too few to stratify"]),
    (_one_class, ["found 1 class(es)", "at least 2"]),
    (_csv_no_label, ["columns 'path' and 'label'", "diagnosis"]),
    (_csv_missing_image, ["line 3", "nope.png", "does not exist"]),
    (_csv_bad_split, ["line 2", "split must be one of", "'training'"]),
]


@pytest.mark.parametrize(
    ("build", "fragments"), BAD_INPUTS, ids=[b.__name__.strip("_") for b, _ in BAD_INPUTS]
)
def test_bad_inputs_raise_named_data_error(
    build, fragments, tmp_path, make_npz, make_png, make_folder
):
    kw = build(tmp_path, make_npz=make_npz, make_png=make_png, make_folder=make_folder)
    before = sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    with pytest.raises(DataError) as err:
        load_dataset(kw["cfg"], data_dir=kw.get("data_dir"))
    assert isinstance(err.value, ValueError)
    for frag in fragments:
        assert frag in str(err.value), f"{frag!r} not in {str(err.value)!r}"
    assert sorted((p, p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before


def test_download_fails_fast_offline(tmp_path, monkeypatch):
    def no_network(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(
        DataError, match="cannot download 'breastmnist' from zenodo.org: no network"
    ):
        load_dataset("breastmnist", data_dir=tmp_path, download=True)


def test_unknown_name_suggests_close_match(tmp_path):
    with pytest.raises(DataError, match=r"did you mean \['breastmnist'"):
        load_dataset("breastmnis", data_dir=tmp_path)


def test_dataset_info_validates():
    with pytest.raises(DataError, match="task must be one of"):
        DatasetInfo("x", "regression", 2, 1, 2, (8, 8), ("a", "b"), "x")  # type: ignore[arg-type]


def test_without_medmnist_installed_tasks_are_inferred(medmnist_dir, monkeypatch, caplog):
    import importlib.util

    from med_core.data import _medmnist

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "medmnist" else real_find_spec(name, *a),
    )
    _medmnist._info_table.cache_clear()
    try:
        with caplog.at_level("WARNING"):
            breast = load_dataset("breastmnist", data_dir=medmnist_dir)
            retina = load_dataset("retinamnist", data_dir=medmnist_dir)
            adrenal = load_dataset("adrenalmnist3d", data_dir=medmnist_dir)
    finally:
        _medmnist._info_table.cache_clear()
    assert "medmnist is not installed" in caplog.text
    assert (breast.info.task, breast.info.class_names) == ("binary", ("0", "1"))
    assert (retina.info.task, retina.info.num_classes, retina.info.in_chans) == (
        "multi-class",
        5,
        3,
    )
    assert adrenal.info.spatial_dims == 3 and adrenal.train.images.shape[1:] == (1, 28, 28, 28)
