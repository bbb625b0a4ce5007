"""One registry of model factories, and `create_model`: a zoo name, a library model (``timm:resnet18``,
``torchvision:resnet18``, see `rlpruner.models.hubs`) or a ``package.module:factory`` path.

Every model built here carries ``model.rlpruner_spec``, a JSON-able dict saying how to rebuild the
original architecture; `model_from_spec` is its inverse (used when loading saved models).
"""
from __future__ import annotations

import importlib
import inspect
import json
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from rlpruner.errors import CheckpointError, ConfigError
from rlpruner.models.hubs import HUBS, hub_of
from rlpruner.registry import Registry

Factory = Callable[..., nn.Module]
SPEC_ATTR = "rlpruner_spec"
SPEC_SOURCES = ("zoo", "import")  # plus the prefix of every model library in hubs.HUBS
_REQUIRED_OPTIONS = ("num_classes", "in_channels")


class ModelRegistry(Registry[Factory]):
    """Maps a model name to ``factory(num_classes=, in_channels=, **options) -> nn.Module``."""

    def __init__(self) -> None:
        super().__init__("model", hint="; or give a library model 'timm:NAME' / 'torchvision:NAME', or an "
                                       "import path 'package.module:factory'")

    def check(self, name: str, factory: Factory) -> None:
        missing = [p for p in _REQUIRED_OPTIONS if not _accepts(factory, p)]
        if missing:
            raise ConfigError(f"model factory {_qualname(factory)} registered as {name!r} must accept "
                              f"the keyword arguments {', '.join(missing)}")

    def factory(self, name: str) -> Factory:
        """The factory registered as `name` (`get`); UnknownNameError lists the closest names."""
        return self.get(name)


# The zoo: filled once at import time by the @register_model decorators of rlpruner.models.*
MODELS = ModelRegistry()
register_model = MODELS.register


def list_models() -> list[str]:
    """Names of the registered models, sorted."""
    return MODELS.names()


def create_model(name: str, num_classes: int = 10, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a zoo model by name, a library model (``"timm:resnet18"``, ``"torchvision:resnet18"``), or
    call the factory at ``"package.module:factory"``.

    Import-path factories receive ``num_classes``/``in_channels`` only when their signature accepts
    them. Extra keyword options must be JSON values: they are recorded in ``model.rlpruner_spec``
    (a library's weight-choosing options, such as timm's ``pretrained``, are passed on, not recorded).
    """
    if not isinstance(name, str) or not name:
        raise ConfigError(f"model name must be a non-empty string, not {name!r}")
    num_classes = _positive_int("num_classes", num_classes)
    in_channels = _positive_int("in_channels", in_channels)
    hub = hub_of(name)
    if hub is not None:
        options = _json_options(name, hub.recorded(kwargs))
        model = hub.create(name, num_classes, in_channels, kwargs)
        if not isinstance(model, nn.Module):
            raise ConfigError(f"model {name!r} is a {type(model).__name__}, not a torch.nn.Module")
        source = hub.prefix
    else:
        options = _json_options(name, kwargs)
        source = "import" if ":" in name else "zoo"
        factory = _resolve_import_path(name) if source == "import" else MODELS.get(name)
        model = _call_factory(name, factory, num_classes, in_channels, kwargs)
    spec = {"source": source, "name": name,
            "kwargs": {"num_classes": num_classes, "in_channels": in_channels, **options}}
    setattr(model, SPEC_ATTR, spec)
    return model


def model_spec(model: nn.Module) -> dict | None:
    """A detached copy of ``model.rlpruner_spec``, or None for a model not built by `create_model`."""
    spec = getattr(model, SPEC_ATTR, None)
    return None if spec is None else json.loads(json.dumps(spec))


def model_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """Rebuild the (unpruned) model a spec describes; CheckpointError when the spec is malformed.

    Callers that read specs from untrusted files must vet ``source == "import"`` paths first:
    building one imports (runs) that module.
    """
    problem = spec_problem(spec)
    if problem:
        raise CheckpointError(f"malformed model spec: {problem}")
    try:
        return create_model(spec["name"], **spec["kwargs"])
    except ConfigError as exc:
        raise CheckpointError(f"cannot rebuild the model from its spec: {exc}") from exc


def spec_problem(spec: Any) -> str | None:
    """What is wrong with a spec's shape (None when it is well-formed)."""
    if not isinstance(spec, Mapping):
        return f"expected a mapping, got {type(spec).__name__}"
    if set(spec) != {"source", "name", "kwargs"}:
        return f"keys must be exactly source, name, kwargs (got {', '.join(sorted(map(str, spec)))})"
    source, name, kwargs = spec["source"], spec["name"], spec["kwargs"]
    sources = (*SPEC_SOURCES, *HUBS.names())
    if source not in sources:
        return f"source must be one of {', '.join(sources)}, not {source!r}"
    if not isinstance(name, str) or not name:
        return f"name must be a non-empty string, not {name!r}"
    hub = hub_of(name)
    expected = hub.prefix if hub else ("import" if ":" in name else "zoo")
    if source != expected:
        return (f"source {source!r} does not match name {name!r}, which is a {expected!r} name (import "
                "paths contain ':', library models are named 'library:model')")
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        return "kwargs must be a mapping with string keys"
    for key in _REQUIRED_OPTIONS:
        value = kwargs.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"kwargs.{key} must be a positive integer, not {value!r}"
    return None


def _positive_int(option: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, not {value!r}")
    return int(value)


def _json_options(name: str, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The options as they will read back from JSON (tuples become lists)."""
    for key, value in kwargs.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            raise ConfigError(f"model {name!r}: option {key}={value!r} is not a JSON value; model "
                              "options are saved with the model, so use numbers, strings, "
                              "booleans, None, lists or dicts") from None
    return json.loads(json.dumps(dict(kwargs)))


def _resolve_import_path(path: str) -> Factory:
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute or ":" in attribute:
        raise ConfigError(f"bad model import path {path!r}: expected 'package.module:factory'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # importing runs the user's module: any failure means a bad path
        raise ConfigError(f"model import path {path!r}: cannot import module {module_name!r} "
                          f"({type(exc).__name__}: {exc})") from exc
    for part in attribute.split("."):
        if not hasattr(target, part):
            raise ConfigError(f"model import path {path!r}: {module_name!r} has no attribute "
                              f"{attribute!r}")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model import path {path!r} names a {type(target).__name__}, "
                          "not a callable that returns an nn.Module")
    return target


def _call_factory(name: str, factory: Factory, num_classes: int, in_channels: int,
                  options: Mapping[str, Any]) -> nn.Module:
    arguments = dict(options)
    for key, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if _accepts(factory, key):
            arguments[key] = value
    _check_arguments(name, factory, arguments)
    model = factory(**arguments)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model {name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


def _check_arguments(name: str, factory: Factory, arguments: Mapping[str, Any]) -> None:
    """Refuse unknown or missing options up front, naming the options the factory does take."""
    signature = _signature(factory)
    if signature is None:
        return
    try:
        signature.bind(**arguments)
    except TypeError as exc:
        options = [p.name for p in signature.parameters.values()
                   if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        raise ConfigError(f"model {name!r}: {exc} (its options: {', '.join(options) or 'none'})") \
            from None


def _accepts(factory: Factory, option: str) -> bool:
    signature = _signature(factory)
    if signature is None:
        return False
    params = signature.parameters
    return option in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _signature(factory: Factory) -> inspect.Signature | None:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        return None


def _qualname(factory: Factory) -> str:
    module = getattr(factory, "__module__", "?")
    return f"{module}.{getattr(factory, '__qualname__', repr(factory))}"
