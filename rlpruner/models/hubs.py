"""Model libraries users already have: ``timm:<name>`` and ``torchvision:<name>``.

A *hub* builds a library's model by name, sized like a zoo model (``num_classes``, ``in_channels``)
with random weights; the user's trained weights come from a state-dict file afterwards
(`rlpruner.io.load_weights`, CLI ``--weights``). Hub names are trusted like zoo names when a saved
model is rebuilt: building one imports the library, not code named by the file.

    create_model("timm:resnet18", num_classes=10)
    create_model("torchvision:mobilenet_v3_small", num_classes=10)

Options that only choose initial weights (timm's ``pretrained``, torchvision's ``weights``) are
passed on but not recorded in the model's spec: a rebuilt model gets its weights from the file.
"""
from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from torch import nn

from rlpruner.errors import ConfigError
from rlpruner.registry import Registry

Builder = Callable[[ModuleType, str, int, int, Mapping[str, Any]], nn.Module]


@dataclass(frozen=True)
class ModelHub:
    """How to build the models of one library: ``<prefix>:<model name>``."""

    prefix: str                          # what users write before the colon, e.g. "timm"
    package: str                         # the module to import
    install: str                         # how to get it, for the not-installed message
    build: Builder                       # (package module, name, num_classes, in_channels, options)
    names: Callable[[ModuleType], list[str]]
    weight_options: tuple[str, ...] = ()  # options that pick initial weights only: not recorded

    def split(self, full_name: str) -> str:
        """``"timm:resnet18"`` -> ``"resnet18"``; ConfigError when nothing follows the colon."""
        name = full_name[len(self.prefix) + 1:]
        if not name:
            raise ConfigError(f"model {full_name!r}: give a {self.prefix} model name after "
                              f"'{self.prefix}:', e.g. {self.prefix}:resnet18")
        return name

    def module(self, full_name: str) -> ModuleType:
        """The library, imported; a missing or broken install is one clear ConfigError."""
        try:
            return importlib.import_module(self.package)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.split(".")[0] == self.package:
                raise ConfigError(f"model {full_name!r} needs the {self.package} package, which is not "
                                  f"installed: {self.install}") from None
            needed = (exc.name or "?").split(".")[0]
            raise ConfigError(f"model {full_name!r}: importing {self.package} failed because the package "
                              f"{needed!r} it needs is missing: pip install {needed}") from exc
        except Exception as exc:  # a broken install fails in its own ways (e.g. mismatched binaries)
            raise ConfigError(f"model {full_name!r}: importing {self.package} failed "
                              f"({type(exc).__name__}: {exc})") from exc

    def create(self, full_name: str, num_classes: int, in_channels: int,
               options: Mapping[str, Any]) -> nn.Module:
        name = self.split(full_name)
        package = self.module(full_name)
        try:
            return self.build(package, name, num_classes, in_channels, options)
        except ConfigError:
            raise
        except Exception as exc:  # the library's own error for bad options, named with the model
            raise ConfigError(f"model {full_name!r}: {self.package} could not build it "
                              f"({type(exc).__name__}: {exc})") from exc

    def recorded(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options a saved model records (those that shape the architecture)."""
        return {k: v for k, v in options.items() if k not in self.weight_options}


# --------------------------------------------------------------------------------------------------
# The libraries
# --------------------------------------------------------------------------------------------------

def _unknown(hub: str, package: ModuleType, name: str, names: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, names, n=8, cutoff=0.5)
    version = getattr(package, "__version__", "?")
    return ConfigError(f"unknown {hub} model {name!r} ({hub} {version} has {len(names)} models)"
                       + (f"; closest: {', '.join(close)}" if close else ""))


def _timm_names(timm: ModuleType) -> list[str]:
    return list(timm.list_models())


def _build_timm(timm: ModuleType, name: str, num_classes: int, in_channels: int,
                options: Mapping[str, Any]) -> nn.Module:
    architecture = name.split(".", 1)[0]  # "resnet18.a1_in1k": the tag after the dot picks weights
    if not timm.is_model(architecture):
        raise _unknown("timm", timm, name, _timm_names(timm))
    arguments = {"pretrained": False, **options, "num_classes": num_classes, "in_chans": in_channels}
    return timm.create_model(name, **arguments)


def _torchvision_names(torchvision: ModuleType) -> list[str]:
    return list(torchvision.models.list_models())


def _build_torchvision(torchvision: ModuleType, name: str, num_classes: int, in_channels: int,
                       options: Mapping[str, Any]) -> nn.Module:
    names = _torchvision_names(torchvision)
    if name not in names:
        raise _unknown("torchvision", torchvision, name, names)
    if in_channels != 3:
        raise ConfigError(f"model 'torchvision:{name}': torchvision models take 3-channel images, "
                          f"not {in_channels}; use 3-channel data (CLI: --in-channels 3)")
    return torchvision.models.get_model(name, **{"weights": None, **options, "num_classes": num_classes})


def default_hubs() -> Registry[ModelHub]:
    """timm and torchvision; more are added with ``HUBS.add(prefix, ModelHub(...))``."""
    hubs: Registry[ModelHub] = Registry("model library")
    hubs.add("timm", ModelHub("timm", "timm", "pip install timm", _build_timm, _timm_names,
                              weight_options=("pretrained", "pretrained_cfg", "pretrained_cfg_overlay",
                                              "checkpoint_path")))
    hubs.add("torchvision", ModelHub("torchvision", "torchvision", "pip install torchvision",
                                     _build_torchvision, _torchvision_names,
                                     weight_options=("weights", "progress")))
    return hubs


HUBS = default_hubs()


def hub_of(name: str) -> ModelHub | None:
    """The hub a ``prefix:model`` name belongs to, or None (a zoo name or an import path)."""
    prefix, colon, _ = name.partition(":")
    return HUBS.get(prefix) if colon and prefix in HUBS else None
