"""CIFAR-10 / CIFAR-100 from the standard local "python version" archives. Never downloads.

Looked for, under `root` (or `root` itself being the extracted folder):
  cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}  or  cifar-10-python.tar.gz
  cifar-100-python/{train, test, meta}                             or  cifar-100-python.tar.gz
"""
from __future__ import annotations

import io
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError
from .base import (AugmentConfig, Splits, check_fractions, convert_channels, make_splits, resize,
                   stratified_split)


@dataclass(frozen=True)
class CifarLayout:
    folder: str
    archive: str
    train_files: tuple[str, ...]
    test_file: str
    meta_file: str
    label_key: str
    names_key: str


LAYOUTS = {
    "cifar10": CifarLayout("cifar-10-batches-py", "cifar-10-python.tar.gz",
                           tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch", "batches.meta",
                           "labels", "label_names"),
    "cifar100": CifarLayout("cifar-100-python", "cifar-100-python.tar.gz", ("train",), "test", "meta",
                            "fine_labels", "fine_label_names"),
}

# The CIFAR archives are pickled dicts, and unpickling can run arbitrary code. Only the few globals
# that plain dicts of numpy arrays need are resolved; anything else in the file is refused.
_ALLOWED_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"), ("numpy.core.multiarray", "scalar"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how Python 3 writes bytes in pickle protocol 2
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        if module.startswith("numpy") and module.endswith("multiarray"):
            module = "numpy._core.multiarray" if hasattr(np, "_core") else "numpy.core.multiarray"
        return super().find_class(module, name)


def unpickle_batch(data: bytes, source: str) -> dict[str, object]:
    """One CIFAR batch/meta file as a dict with str keys (the files were written by Python 2)."""
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a corrupt or hostile file
        raise DataError(f"{source}: not a valid CIFAR pickle ({exc})") from exc
    if not isinstance(obj, dict):
        raise DataError(f"{source}: expected a pickled dict, got {type(obj).__name__}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


class _ArchiveReader:
    """Reads member files from the extracted folder or, failing that, straight from the .tar.gz."""

    def __init__(self, root: Path, layout: CifarLayout):
        self.layout = layout
        candidates = [root / layout.folder, root] if root.name != layout.folder else [root]
        self.folder = next((c for c in candidates if (c / layout.meta_file).is_file()), None)
        self.archive = root / layout.archive
        if self.folder is None and not self.archive.is_file():
            looked = ", ".join(str(c) for c in candidates)
            raise DataError(f"CIFAR archive not found: looked for '{layout.folder}/{layout.meta_file}' "
                            f"in {looked} and for {self.archive}; put the extracted "
                            f"'{layout.folder}' folder or '{layout.archive}' there (nothing is downloaded)")

    def read(self, name: str) -> dict[str, object]:
        if self.folder is not None:
            path = self.folder / name
            if not path.is_file():
                raise DataError(f"CIFAR file missing: {path}")
            return unpickle_batch(path.read_bytes(), str(path))
        member = f"{self.layout.folder}/{name}"
        try:
            with tarfile.open(self.archive, "r:gz") as tar:
                data = tar.extractfile(member)
                if data is None:
                    raise KeyError(member)
                return unpickle_batch(data.read(), f"{self.archive}:{member}")
        except (KeyError, tarfile.TarError, OSError) as exc:
            raise DataError(f"{self.archive}: cannot read '{member}' ({exc})") from exc


def _images_labels(batches: list[dict[str, object]], label_key: str,
                   source: str) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        data = np.concatenate([np.asarray(b["data"], dtype=np.uint8) for b in batches])
        labels = np.concatenate([np.asarray(b[label_key], dtype=np.int64) for b in batches])
    except KeyError as exc:
        raise DataError(f"{source}: batch has no '{exc.args[0]}' entry") from exc
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(data) != len(labels):
        raise DataError(f"{source}: expected data of shape (N, 3072) with N labels, got {data.shape} "
                        f"and {len(labels)} labels")
    return torch.from_numpy(data.reshape(-1, 3, 32, 32).copy()), torch.from_numpy(labels)


def load_cifar(name: str, *, root: str | Path, image_size: int = 32, in_channels: int = 3, seed: int = 0,
               val_fraction: float = 0.1) -> Splits:
    """CIFAR-10/100: the official test batch is the test split; val is carved from train (stratified)."""
    check_fractions(val_fraction)
    layout = LAYOUTS[name]
    reader = _ArchiveReader(Path(root).expanduser(), layout)
    meta = reader.read(layout.meta_file)
    classes = [c.decode() if isinstance(c, bytes) else str(c) for c in meta.get(layout.names_key, [])]
    train_x, train_y = _images_labels([reader.read(f) for f in layout.train_files], layout.label_key, name)
    test_x, test_y = _images_labels([reader.read(layout.test_file)], layout.label_key, name)
    num_classes = len(classes) or int(max(train_y.max(), test_y.max())) + 1
    train_x = convert_channels(resize(train_x, image_size), in_channels, name)
    test_x = convert_channels(resize(test_x, image_size), in_channels, name)
    val, train = stratified_split(train_y.numpy(), [val_fraction], seed)
    return make_splits(name, train_x, train_y, [train, val], test=(test_x, test_y), num_classes=num_classes,
                       classes=classes, augment=AugmentConfig(crop_padding=max(1, image_size // 8),
                                                              horizontal_flip=True))
