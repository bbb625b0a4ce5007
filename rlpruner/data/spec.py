"""`DataSpec`: everything needed to rebuild the same splits, small enough to store in a checkpoint."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..errors import ConfigError
from .base import Splits
from .registry import get_dataset


@dataclass(frozen=True)
class DataSpec:
    """A dataset name plus its options. `None` sizes mean "the dataset's default".

    `seed` is the split seed: it is kept separate from the training seed so that runs with different
    training seeds are compared on the same validation and test images.
    """

    name: str = "digits"
    root: str | None = None
    image_size: int | None = None
    in_channels: int | None = None
    seed: int = 0
    val_fraction: float = 0.1
    options: Mapping[str, Any] = field(default_factory=dict)

    def load(self) -> Splits:
        return get_dataset(self.name, self.root, image_size=self.image_size, in_channels=self.in_channels,
                           seed=self.seed, val_fraction=self.val_fraction, **dict(self.options))

    def resolved(self, splits) -> DataSpec:
        """This spec with the sizes the loaded `splits` actually have, so a reload cannot drift."""
        return replace(self, image_size=splits.image_size, in_channels=splits.in_channels)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["options"] = dict(self.options)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "data spec") -> DataSpec:
        known = {"name", "root", "image_size", "in_channels", "seed", "val_fraction", "options"}
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str) or set(data) - known:
            raise ConfigError(f"{source}: not a data spec (expected keys {', '.join(sorted(known))})")
        options = data.get("options") or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{source}: data options must be an object, got {type(options).__name__}")
        return cls(**{**dict(data), "options": dict(options)})
