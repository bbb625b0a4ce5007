"""Image folders, one sub-folder per class: root/<class>/*.png|jpg|jpeg|bmp|gif|webp, or the common
root/train/<class>/... + root/val/<class>/... layout (the `val` or `test` folder becomes the test
split; validation is then carved out of `train`).

Small folders are decoded once into memory (fast, like the other datasets). Large ones stream: each
image is read, cropped and augmented when a DataLoader worker asks for it, and nothing decoded is
kept, so memory does not grow with the folder. `stream=None` picks by the decoded size.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from ..errors import ConfigError, DataError
from .base import (AugmentConfig, Splits, channel_stats, check_fractions, make_splits,
                   stratified_split, stratified_subset)
from .transforms import CropConfig, read_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
STREAM_ABOVE_BYTES = 512 * 2**20  # stream=None: stream when the decoded images would take more than this
STATS_SAMPLES = 256               # training images whose pixels set a streamed folder's normalisation
HELD_OUT_FOLDERS = ("val", "test")


@dataclass(frozen=True)
class Folder:
    """The images of one folder tree: file paths (a compact byte-string array, cheap to share with
    DataLoader workers) and class indices."""

    root: Path
    classes: tuple[str, ...]
    files: np.ndarray   # bytes, relative to root
    labels: np.ndarray  # int64

    def path(self, index: int) -> Path:
        return self.root / self.files[index].decode()


def find_images(root: Path, classes: tuple[str, ...] | None = None) -> Folder:
    """Class names (sorted sub-folder names, or the given ones) and the images in a stable order."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected {root}/<class name>/<image>.png)")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is not None and set(found) - set(classes):
        raise DataError(f"{root}: class folder(s) {', '.join(sorted(set(found) - set(classes)))} are not in the "
                        f"training folder's classes")
    classes = tuple(found) if classes is None else classes
    files, labels = [], []
    for label, name in enumerate(classes):
        folder = root / name
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in IMAGE_SUFFIXES:
                    files.append(f"{name}/{f.name}".encode())
                    labels.append(label)
    if len(classes) < 2 or not files:
        raise DataError(f"{root}: need at least 2 class sub-folders containing images "
                        f"({', '.join(IMAGE_SUFFIXES)}), found {len(found)} folders and {len(files)} images")
    return Folder(root, classes, np.array(files, dtype=np.bytes_), np.array(labels, dtype=np.int64))


def folder_layout(root: Path) -> tuple[Folder, Folder | None]:
    """(the training images, the held-out test images or None): root/train with root/val (or
    root/test) when both exist, else root itself with no separate test folder."""
    held_out = next((root / name for name in HELD_OUT_FOLDERS if (root / name).is_dir()), None)
    if (root / "train").is_dir() and held_out is not None:
        train = find_images(root / "train")
        return train, find_images(held_out, train.classes)
    return find_images(root), None


def read_image(path: Path, image_size: int, in_channels: int) -> np.ndarray:
    """One image as uint8 (C, H, W), converted to grey/RGB and resized (bilinear) to a square."""
    from PIL import Image  # Pillow comes with matplotlib

    try:
        with Image.open(path) as img:
            img = img.convert("L" if in_channels == 1 else "RGB")
            img = img.resize((image_size, image_size), Image.Resampling.BILINEAR)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from exc
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


class StreamingImages(Dataset):
    """Images read from their files on access, normalised per channel; nothing decoded is kept.

    `dataset[i]` is the evaluation crop of image i; `dataset[(i, seed)]` its random training crop,
    drawn from a generator seeded with `seed` (what `AugmentSampler` hands out).
    """

    def __init__(self, folder: Folder, indices: np.ndarray, crop: CropConfig, in_channels: int,
                 mean: torch.Tensor, std: torch.Tensor):
        self.folder = Folder(folder.root, folder.classes, folder.files[indices], folder.labels[indices])
        self.labels = torch.from_numpy(self.folder.labels)
        self.crop, self.in_channels = crop, in_channels
        self.mean, self.std = mean.float().view(-1, 1, 1), std.float().view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        generator = None if seed is None else torch.Generator().manual_seed(int(seed))
        pixels = read_crop(self.folder.path(int(index)), self.in_channels, self.crop, generator)
        image = torch.from_numpy(pixels).float().div_(255.0)
        return (image - self.mean) / self.std, self.labels[index]


def load_imagefolder(*, root: str | Path, image_size: int = 32, in_channels: int = 3, seed: int = 0,
                     val_fraction: float = 0.1, test_fraction: float = 0.2, stream: bool | None = None) -> Splits:
    """Train / val / test splits of an image folder. With a train/ + val/ layout the held-out folder
    is the test split and `test_fraction` is not used. `stream`: read images lazily (True), decode
    them all into memory (False), or decide by their decoded size (None)."""
    check_fractions(val_fraction, test_fraction)
    if in_channels not in (1, 3):
        raise ConfigError(f"imagefolder: in_channels must be 1 or 3, got {in_channels}")
    if stream not in (None, True, False):
        raise ConfigError(f"imagefolder: stream must be true, false or null (decide by size), got {stream!r}")
    train, held_out = folder_layout(Path(root).expanduser())
    fractions = [val_fraction] if held_out is not None else [val_fraction, test_fraction]
    parts = stratified_split(train.labels, fractions, seed)
    val_idx, train_idx = parts[0], parts[-1]
    total = len(train.labels) + (0 if held_out is None else len(held_out.labels))
    if stream is None:
        stream = total * in_channels * image_size ** 2 > STREAM_ABOVE_BYTES
    if not stream:
        return _in_memory(train, held_out, parts, image_size, in_channels)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise DataError(f"image folder {root} is too small for a train/val split "
                        f"({len(train_idx)}/{len(val_idx)} samples)")
    crop = CropConfig(image_size)
    mean, std = _folder_stats(train, train_idx, crop, in_channels, seed)

    def part(folder: Folder, indices: np.ndarray) -> StreamingImages:
        return StreamingImages(folder, indices, crop, in_channels, mean, std)

    test = (part(held_out, np.arange(len(held_out.labels))) if held_out is not None
            else part(train, parts[1]) if len(parts[1]) else None)
    return Splits(name="imagefolder", train=part(train, train_idx), val=part(train, val_idx), test=test,
                  num_classes=len(train.classes), in_channels=in_channels, image_size=image_size,
                  augment=AugmentConfig(), classes=train.classes)


def _in_memory(train: Folder, held_out: Folder | None, parts: list[np.ndarray], image_size: int,
               in_channels: int) -> Splits:
    def decode(folder: Folder) -> torch.Tensor:
        return torch.from_numpy(np.stack([read_image(folder.path(i), image_size, in_channels)
                                          for i in range(len(folder.labels))]))

    test = None if held_out is None else (decode(held_out), torch.from_numpy(held_out.labels))
    return make_splits("imagefolder", decode(train), torch.from_numpy(train.labels),
                       [parts[-1], *parts[:-1]], num_classes=len(train.classes), classes=train.classes, test=test,
                       augment=AugmentConfig(crop_padding=max(1, image_size // 8), horizontal_flip=True))


def _folder_stats(folder: Folder, train_idx: np.ndarray, crop: CropConfig, in_channels: int,
                  seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of the evaluation crops of a seeded, class-stratified sample of the
    training images."""
    picked = train_idx[stratified_subset(folder.labels[train_idx], STATS_SAMPLES, seed)]
    pixels = np.stack([read_crop(folder.path(int(i)), in_channels, crop, None) for i in picked])
    return channel_stats(torch.from_numpy(pixels))

