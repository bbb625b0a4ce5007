from .._placeholder import module_getattr
from . import functional  # noqa: F401

__getattr__ = module_getattr("torchvision.transforms")
