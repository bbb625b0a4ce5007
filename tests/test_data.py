"""Datasets: deterministic disjoint splits, the CIFAR archive format, image folders, augmentation."""
from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpruner.data import (AugmentConfig, DataSpec, augment_batch, get_dataset, list_datasets, make_loaders,
                           stratified_split)
from rlpruner.data.augment import random_crop
from rlpruner.errors import ConfigError, DataError, UnknownNameError



def raw_pixels(dataset) -> torch.Tensor:
    """Undo the per-channel normalisation: images back in [0, 1]."""
    x, _ = dataset.tensors()
    return x * dataset.std + dataset.mean


# ---------------------------------------------------------------------------------------------- splits

@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 4), min_size=1, max_size=200), st.floats(0, 0.45), st.floats(0, 0.45),
       st.integers(0, 2**31))
def test_stratified_split_is_a_disjoint_cover_and_seeded(labels, f1, f2, seed):
    labels = np.array(labels)
    parts = stratified_split(labels, [f1, f2], seed)
    joined = np.concatenate(parts)
    assert sorted(joined.tolist()) == list(range(len(labels)))  # disjoint and covering
    again = stratified_split(labels, [f1, f2], seed)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


def test_digits_splits_are_disjoint_stratified_and_deterministic():
    splits = get_dataset("digits", image_size=8, seed=3)
    sizes = [len(splits.train), len(splits.val), len(splits.test)]
    assert sum(sizes) == 1797 and min(sizes) > 100
    for part in (splits.train, splits.val, splits.test):
        assert set(part.labels.tolist()) == set(range(10))  # stratified: every class in every split
    # the three parts together are exactly the sklearn digits, each image once
    from sklearn.datasets import load_digits
    theirs = load_digits().images.reshape(1797, -1) / 16.0
    ours = torch.cat([raw_pixels(p) for p in (splits.train, splits.val, splits.test)]).reshape(1797, -1)
    assert np.allclose(np.array(sorted(ours.numpy().tolist())), np.array(sorted(theirs.tolist())), atol=1e-5)
    same = get_dataset("digits", image_size=8, seed=3)
    assert torch.equal(same.test.images, splits.test.images) and torch.equal(same.val.labels, splits.val.labels)
    other = get_dataset("digits", image_size=8, seed=4)
    assert not torch.equal(other.test.images, splits.test.images)


def test_digits_resize_channels_and_normalisation():
    splits = get_dataset("digits", image_size=16, in_channels=3)
    x, y = splits.train.tensors()
    assert x.shape == (len(splits.train), 3, 16, 16) and y.dtype == torch.long
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-2)
    assert splits.augment.horizontal_flip is False  # mirrored digits are different digits
    assert splits.example_inputs(4).shape == (4, 3, 16, 16)


def test_registry_names_and_options():
    assert {"digits", "cifar10", "cifar100", "imagefolder", "synthetic"} <= set(list_datasets())
    with pytest.raises(UnknownNameError, match="digits.*synthetic"):
        get_dataset("mnist")
    with pytest.raises(ConfigError, match="difficulty"):
        get_dataset("digits", difficulty=0.5)
    with pytest.raises(ConfigError, match="val_fraction"):
        get_dataset("digits", val_fraction=1.5)


def test_data_spec_round_trips_and_reloads_the_same_split():
    spec = DataSpec("synthetic", image_size=8, seed=2, options={"samples_per_class": 10, "num_classes": 3})
    splits = spec.load()
    back = DataSpec.from_dict(spec.resolved(splits).to_dict())
    assert back.in_channels == 3 and torch.equal(back.load().val.images, splits.val.images)


# ----------------------------------------------------------------------------------------------- CIFAR

def write_pickle(path, obj) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the archives are Python-2 era protocol-2 pickles


def cifar_batch(rng, n: int, label_key: str, num_classes: int) -> dict:
    return {b"batch_label": b"batch", label_key.encode(): rng.integers(0, num_classes, n).tolist(),
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"x.png"] * n}


def write_cifar10(root, per_batch: int = 20) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(rng, per_batch, "labels", 10))
    test = cifar_batch(rng, per_batch, "labels", 10)
    write_pickle(folder / "test_batch", test)
    write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)],
                                           b"num_cases_per_batch": per_batch, b"num_vis": 3072})
    return test[b"data"], np.array(test[b"labels"])


def test_cifar10_reads_the_archive_format(tmp_path):
    test_data, test_labels = write_cifar10(tmp_path)
    splits = get_dataset("cifar10", tmp_path, val_fraction=0.2)
    assert splits.num_classes == 10 and splits.classes[3] == "c3" and splits.in_channels == 3
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 20
    pixels = (raw_pixels(splits.test) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(test_data.reshape(-1, 3, 32, 32)))  # official test = test split
    assert torch.equal(splits.test.labels, torch.from_numpy(test_labels))
    assert splits.augment == AugmentConfig(crop_padding=4, horizontal_flip=True)


def test_cifar10_from_tar_gz_and_resized(tmp_path):
    write_cifar10(tmp_path / "src")
    with tarfile.open(tmp_path / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "src" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    splits = get_dataset("cifar10", tmp_path, image_size=16, in_channels=1)
    assert splits.train.images.shape[1:] == (1, 16, 16) and len(splits.test) == 20


def test_cifar100_reads_fine_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    write_pickle(folder / "train", {**cifar_batch(rng, 60, "fine_labels", 100), b"coarse_labels": [0] * 60})
    write_pickle(folder / "test", {**cifar_batch(rng, 15, "fine_labels", 100), b"coarse_labels": [0] * 15})
    write_pickle(folder / "meta", {b"fine_label_names": [f"f{i}".encode() for i in range(100)],
                                   b"coarse_label_names": [b"c"] * 20})
    splits = get_dataset("cifar100", folder)  # root may also be the extracted folder itself
    assert splits.num_classes == 100 and splits.classes[99] == "f99"
    assert len(splits.train) + len(splits.val) == 60 and len(splits.test) == 15


def test_missing_cifar_archive_says_where_it_looked(tmp_path):
    with pytest.raises(DataError) as info:
        get_dataset("cifar10", tmp_path / "nowhere")
    message = str(info.value)
    assert str(tmp_path / "nowhere") in message and "cifar-10-batches-py/batches.meta" in message
    assert "cifar-10-python.tar.gz" in message
    with pytest.raises(DataError, match="cifar-100-python/meta"):
        get_dataset("cifar100", tmp_path)


class _Hostile:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_cifar_unpickler_refuses_other_globals(tmp_path, capsys):
    write_cifar10(tmp_path)
    write_pickle(tmp_path / "cifar-10-batches-py" / "batches.meta", {b"label_names": _Hostile()})
    with pytest.raises(DataError, match=r"refusing to load global \w+\.print"):
        get_dataset("cifar10", tmp_path)
    assert "must never run" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------ image folder

def test_imagefolder_from_generated_pngs(tmp_path):
    from PIL import Image

    colours = {"blue": (0, 0, 255), "red": (255, 0, 0)}
    for name, colour in colours.items():
        (tmp_path / name).mkdir()
        for i in range(10):
            Image.new("RGB", (12 + i, 10), colour).save(tmp_path / name / f"{i}.png")
    (tmp_path / "notes.txt").write_text("not a class")
    splits = get_dataset("imagefolder", tmp_path, image_size=8, val_fraction=0.2, test_fraction=0.2)
    assert splits.classes == ("blue", "red") and splits.num_classes == 2
    assert len(splits.train) + len(splits.val) + len(splits.test) == 20
    pixels = raw_pixels(splits.train)
    red_is_label_1 = (pixels[:, 0].mean(dim=(1, 2)) > 0.5).long()
    assert torch.equal(red_is_label_1, splits.train.labels) and pixels.shape[1:] == (3, 8, 8)


def test_imagefolder_errors(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        get_dataset("imagefolder", tmp_path / "missing")
    (tmp_path / "only").mkdir()
    with pytest.raises(DataError, match="at least 2 class sub-folders"):
        get_dataset("imagefolder", tmp_path)


# ---------------------------------------------------------------------------------------- synthetic

def test_synthetic_is_seeded_and_configurable():
    kw = dict(image_size=12, in_channels=2, num_classes=4, samples_per_class=20, difficulty=0.9)
    a, b = get_dataset("synthetic", seed=5, **kw), get_dataset("synthetic", seed=5, **kw)
    assert torch.equal(a.train.images, b.train.images) and a.num_classes == 4
    assert a.train.images.shape[1:] == (2, 12, 12) and len(a.train) + len(a.val) + len(a.test) == 80
    assert not torch.equal(get_dataset("synthetic", seed=6, **kw).train.images, a.train.images)
    with pytest.raises(ConfigError, match="difficulty"):
        get_dataset("synthetic", difficulty=2.0)


# ------------------------------------------------------------------------------------- augmentation

def test_random_crop_is_a_shifted_window_of_the_padded_image():
    images = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).reshape(2, 3, 6, 6) + 1
    out = random_crop(images, 2, torch.Generator().manual_seed(0))
    assert out.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(random_crop(images, 0, torch.Generator()), images)


def test_augmentation_keeps_shapes_and_is_seeded():
    images = torch.randn(16, 3, 8, 8)
    config = AugmentConfig(crop_padding=1, horizontal_flip=True)

    def run(seed):
        return augment_batch(images, config, torch.Generator().manual_seed(seed))

    assert run(0).shape == images.shape and torch.equal(run(0), run(0)) and not torch.equal(run(0), run(1))
    flipped = augment_batch(images, AugmentConfig(horizontal_flip=True), torch.Generator().manual_seed(0))
    assert all(torch.equal(f, x) or torch.equal(f, x.flip(-1)) for f, x in zip(flipped, images))
    assert any(not torch.equal(f, x) for f, x in zip(flipped, images))


def first_batches(splits, seed, workers=0, count=2):
    loader = make_loaders(splits, 32, seed=seed, workers=workers).train
    it = iter(loader)
    return [next(it) for _ in range(count)]


def test_loaders_are_seeded_and_drop_the_last_short_batch():
    splits = get_dataset("synthetic", image_size=8, samples_per_class=40, num_classes=3)
    a, b, c = first_batches(splits, 0), first_batches(splits, 0), first_batches(splits, 1)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert not torch.equal(a[0][0], c[0][0])
    loaders = make_loaders(splits, 32, seed=0)
    assert all(len(batch[1]) == 32 for batch in loaders.train)
    assert sum(len(batch[1]) for batch in loaders.val) == len(splits.val)
    with pytest.raises(ConfigError, match="batch_size"):
        make_loaders(splits, 0)


def test_worker_loaders_are_seeded_too():
    splits = get_dataset("synthetic", image_size=8, samples_per_class=50, num_classes=3)
    a, b = first_batches(splits, 0, workers=2), first_batches(splits, 0, workers=2)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
