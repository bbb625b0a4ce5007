"""A folder of images, one sub-folder per class: root/<class>/*.png|jpg|jpeg|bmp|gif|webp."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .base import AugmentConfig, Splits, check_fractions, make_splits, stratified_split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def find_images(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names (sorted sub-folder names) and (file, class index) pairs in a stable order."""
    if not root.is_dir():
        raise DataError(f"image folder not found: {root} (expected {root}/<class name>/<image>.png)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    samples = [(f, label) for label, cls in enumerate(classes) for f in sorted((root / cls).iterdir())
               if f.suffix.lower() in IMAGE_SUFFIXES]
    if len(classes) < 2 or not samples:
        raise DataError(f"{root}: need at least 2 class sub-folders containing images "
                        f"({', '.join(IMAGE_SUFFIXES)}), found {len(classes)} folders and "
                        f"{len(samples)} images")
    return classes, samples


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


def load_imagefolder(*, root: str | Path, image_size: int = 32, in_channels: int = 3, seed: int = 0,
                     val_fraction: float = 0.1, test_fraction: float = 0.2) -> Splits:
    check_fractions(val_fraction, test_fraction)
    if in_channels not in (1, 3):
        raise ConfigError(f"imagefolder: in_channels must be 1 or 3, got {in_channels}")
    classes, samples = find_images(Path(root).expanduser())
    images = torch.from_numpy(np.stack([read_image(f, image_size, in_channels) for f, _ in samples]))
    labels = np.array([label for _, label in samples], dtype=np.int64)
    val, test, train = stratified_split(labels, [val_fraction, test_fraction], seed)
    return make_splits("imagefolder", images, torch.from_numpy(labels), [train, val, test],
                       num_classes=len(classes), classes=classes,
                       augment=AugmentConfig(crop_padding=max(1, image_size // 8), horizontal_flip=True))
