"""Streamed image folders, crops, worker-independent augmentation, the bounded validation cache and
capped recovery: data at any scale."""
from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlpruner.batches import CachedBatches
from rlpruner.data import ImageDataset, StreamingImages, get_dataset, make_loaders
from rlpruner.data import imagefolder
from rlpruner.data.transforms import AugmentSampler, CropConfig, centre_box, random_resized_box, read_crop
from rlpruner.distill import DistillConfig, distill
from rlpruner.errors import ConfigError, DataError
from rlpruner.models import create_model
from rlpruner.search import CompressConfig, RLConfig, Target, compress
from rlpruner.task import Task


def _folder(root, classes=3, per_class=10, size=(40, 30), suffix=".jpg"):
    """Class-coloured noise images of a non-square size (JPEG by default)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            pixels = (rng.random((size[1], size[0], 3)) * 80 + 80 * c).clip(0, 255).astype("uint8")
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}{suffix}")
    return root


# ------------------------------------------------------------------------------------------- crops

def test_centre_box_is_resize_shorter_side_then_centre_crop():
    config = CropConfig(32, resize_ratio=0.5)
    assert centre_box(200, 100, config) == (75.0, 25.0, 125.0, 75.0)
    assert centre_box(100, 100, CropConfig(10, resize_ratio=1.0)) == (0.0, 0.0, 100.0, 100.0)


@settings(max_examples=200, deadline=None)
@given(width=st.integers(1, 500), height=st.integers(1, 500), seed=st.integers(0, 2**31))
def test_random_resized_box_lies_inside_the_image_with_its_ratio_in_range(width, height, seed):
    config = CropConfig(16)
    left, top, right, bottom = random_resized_box(width, height, config, torch.Generator().manual_seed(seed))
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    w, h = right - left, bottom - top  # whole pixels: the ratio holds up to rounding of each side
    assert (w + 0.5) / max(h - 0.5, 1e-9) >= config.ratio[0] and (w - 0.5) / (h + 0.5) <= config.ratio[1]


def test_read_crop_eval_is_deterministic_and_training_crops_follow_their_seed(tmp_path):
    root = _folder(tmp_path, classes=2, per_class=1, size=(64, 48))
    path, config = root / "class1" / "0.jpg", CropConfig(24)
    eval_crop = read_crop(path, 3, config, None)
    assert eval_crop.shape == (3, 24, 24) and eval_crop.dtype == np.uint8
    assert np.array_equal(eval_crop, read_crop(path, 3, config, None))
    a = read_crop(path, 3, config, torch.Generator().manual_seed(5))
    assert np.array_equal(a, read_crop(path, 3, config, torch.Generator().manual_seed(5)))
    assert not np.array_equal(a, read_crop(path, 3, config, torch.Generator().manual_seed(6)))
    assert read_crop(path, 1, config, None).shape == (1, 24, 24)
    (root / "class0" / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(DataError, match="bad.jpg"):
        read_crop(root / "class0" / "bad.jpg", 3, config, None)


def test_crop_config_is_validated():
    with pytest.raises(ConfigError, match="crop"):
        CropConfig(16, scale=(0.5, 0.2))


# ---------------------------------------------------------------------------------- image folders

def test_streamed_folder_reads_lazily_with_the_same_split_as_in_memory(tmp_path):
    root = _folder(tmp_path)
    streamed = get_dataset("imagefolder", root, image_size=16, stream=True, val_fraction=0.2, test_fraction=0.2)
    held = get_dataset("imagefolder", root, image_size=16, stream=False, val_fraction=0.2, test_fraction=0.2)
    assert isinstance(streamed.train, StreamingImages) and isinstance(held.train, ImageDataset)
    for part in ("train", "val", "test"):  # the same images in each split, by label and count
        assert torch.equal(getattr(streamed, part).labels, getattr(held, part).labels)
    image, label = streamed.train[0]
    assert image.shape == (3, 16, 16) and image.dtype == torch.float32 and int(label) == 0
    assert torch.equal(streamed.train[0][0], image)  # the evaluation crop is fixed
    assert not torch.equal(streamed.train[(0, 1)][0], streamed.train[(0, 2)][0])  # training crops vary
    pixels = torch.stack([streamed.train[i][0] for i in range(len(streamed.train))])
    assert pixels.mean(dim=(0, 2, 3)).abs().max() < 0.3  # normalised by the training images' own stats
    assert streamed.example_inputs(2).shape == (2, 3, 16, 16)


def test_stream_none_decides_by_the_decoded_size(tmp_path, monkeypatch):
    root = _folder(tmp_path, per_class=4)
    assert isinstance(get_dataset("imagefolder", root, image_size=8).train, ImageDataset)
    monkeypatch.setattr(imagefolder, "STREAM_ABOVE_BYTES", 8 * 8 * 3 * 11)
    assert isinstance(get_dataset("imagefolder", root, image_size=8).train, StreamingImages)
    with pytest.raises(ConfigError, match="stream"):
        get_dataset("imagefolder", root, stream="yes")


@pytest.mark.parametrize("stream", [True, False])
def test_train_and_val_layout_makes_the_val_folder_the_test_split(tmp_path, stream):
    _folder(tmp_path / "train", per_class=10)
    _folder(tmp_path / "val", per_class=3, suffix=".png")
    splits = get_dataset("imagefolder", tmp_path, image_size=8, stream=stream, val_fraction=0.2)
    assert splits.classes == ("class0", "class1", "class2")
    assert len(splits.test) == 9 and len(splits.train) + len(splits.val) == 30 and len(splits.val) == 6
    assert sorted(splits.test.labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    (tmp_path / "val" / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra.*not in the training folder"):
        get_dataset("imagefolder", tmp_path, image_size=8, stream=stream)


def test_streamed_training_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    splits = get_dataset("imagefolder", _folder(tmp_path), image_size=12, stream=True)

    def batches(workers):
        loader = make_loaders(splits, 4, workers=workers, seed=3).train
        return [b for epoch in range(2) for b in loader]

    one, two = batches(0), batches(2)
    assert len(one) == len(two) > 0
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
    half = len(one) // 2  # the second epoch is shuffled and cropped afresh
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(one[:half], one[half:]))


def test_augment_sampler_pairs_every_index_with_a_seed():
    pairs = list(AugmentSampler(7, torch.Generator().manual_seed(0)))
    assert sorted(i for i, _ in pairs) == list(range(7)) and len({s for _, s in pairs}) == 7


# ------------------------------------------------------------------------------- validation cache

class _CountingLoader:
    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


def test_cached_batches_keep_a_small_split_and_stream_a_large_one():
    batches = [(torch.full((4, 3), float(i)), torch.arange(4)) for i in range(5)]
    small = _CountingLoader(batches)
    cached = CachedBatches(small, "cpu", limit_bytes=10_000)
    first, second = list(cached), list(cached)
    assert small.passes == 1 and not cached.streamed
    assert all(torch.equal(a[0], b[0]) for a, b in zip(first, second))
    large = _CountingLoader(batches)
    streamed = CachedBatches(large, "cpu", limit_bytes=100)  # two batches fit, five do not
    assert [b[0][0, 0].item() for b in streamed] == [0, 1, 2, 3, 4]
    assert [b[0][0, 0].item() for b in streamed] == [0, 1, 2, 3, 4]
    assert large.passes == 2 and streamed.streamed
    assert streamed.first()[0][0, 0].item() == 0 and large.passes == 3


# ------------------------------------------------------------------------------ capped recovery

def test_kd_max_batches_caps_each_epoch(tiny_splits, tiny_trained):
    seen = []

    def forward(model, batch):
        if model.training:
            seen.append(len(batch[0]))
        return model(batch[0])

    loaders = make_loaders(tiny_splits, 8, seed=0)
    student = copy.deepcopy(tiny_trained)
    distill(student, tiny_trained, loaders, DistillConfig(epochs=2, max_batches=3, batch_size=8, progress=False),
            task=Task(forward=forward))
    assert len(seen) == 6 < 2 * len(loaders.train)
    with pytest.raises(ConfigError, match="max_batches"):
        DistillConfig(max_batches=0)


# ------------------------------------------------------------------------------------ end to end

def _run(splits, tmp_path, name, **overrides):
    config = CompressConfig(target=Target("flops", 0.3), rl=RLConfig(prune_filter_ratio=0.1, lr_epoch=1, sample_num=2,
                                                                      score_samples=8, bn_samples=8,
                                                                      calibration_samples=8),
                            kd=DistillConfig(epochs=1, batch_size=8, max_batches=2, lr=0.01), final_epochs=1,
                            eval_batch_size=8, latency_repeats=1, latency_warmup=0, progress=False, **overrides)
    torch.manual_seed(0)
    model = create_model("simple_cnn", num_classes=splits.num_classes, in_channels=3, widths=(8, 16))
    return compress(model, splits, config, out_dir=tmp_path / name)


def test_compress_on_a_streamed_folder_gives_the_same_run_with_any_workers_and_cache(tmp_path):
    splits = get_dataset("imagefolder", _folder(tmp_path / "data", per_class=12), image_size=16, stream=True)
    reference = _run(splits, tmp_path, "cached", workers=0)
    other = _run(splits, tmp_path, "streamed", workers=2, val_cache_mb=0)
    keys = ("step", "widths", "val_acc", "val_acc_pruned", "flops")
    assert [{k: getattr(r, k) for k in keys} for r in reference.records] == \
           [{k: getattr(r, k) for k in keys} for r in other.records]
    assert reference.results["final"]["val_acc"] == other.results["final"]["val_acc"]
    assert math.isfinite(reference.results["final"]["test_acc"])
    saved = json.loads((tmp_path / "streamed" / "results.json").read_text())
    assert saved["config"]["workers"] == 2 and saved["config"]["val_cache_mb"] == 0
