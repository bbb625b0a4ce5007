"""Placeholders for names that timm imports from torchvision but the tests never use."""
from __future__ import annotations


class _AnyAttribute(type):
    """A class whose class attributes are placeholders too (e.g. InterpolationMode.BILINEAR)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{cls.__name__}.{name}")


def placeholder(name: str) -> type:
    def refuse(self, *args, **kwargs):
        raise RuntimeError(f"torchvision stand-in: {name} is not available in the tests")

    return _AnyAttribute(name.rsplit(".", 1)[-1], (), {"__init__": refuse})


def module_getattr(module: str):
    """A module-level __getattr__ that answers any public name with a placeholder class."""
    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return placeholder(f"{module}.{name}")
    return __getattr__
