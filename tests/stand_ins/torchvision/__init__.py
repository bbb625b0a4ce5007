"""Test stand-in for torchvision (see tests/stand_ins/README.md)."""
from . import datasets, models, ops, transforms  # noqa: F401

__version__ = "0.0+stand-in"
