"""One Registry type: every "pick a thing by name" refuses an unknown name the same way."""
from __future__ import annotations

import pytest

from rlpruner import importance
from rlpruner.data import DATASETS, get_dataset
from rlpruner.errors import ConfigError, UnknownNameError
from rlpruner.models import MODELS, create_model, unknown_name_message
from rlpruner.registry import Registry


@pytest.mark.parametrize("lookup, kind, closest", [
    (lambda: create_model("resnet2O"), "model", "resnet"),
    (lambda: get_dataset("cifar"), "dataset", "cifar10"),
    (lambda: importance.get("l3"), "importance criterion", "l"),  # l1 or l2
])
def test_unknown_names_get_one_message_with_the_closest_first(lookup, kind, closest):
    with pytest.raises(UnknownNameError) as info:
        lookup()
    message = str(info.value)
    assert message.startswith(f"unknown {kind} ")
    assert message.split("(closest first): ", 1)[1].startswith(closest)


def test_the_registries_are_registries_and_importance_names_are_its_names():
    assert all(isinstance(r, Registry) for r in (MODELS, DATASETS, importance.CRITERIA))
    assert importance.NAMES == tuple(importance.CRITERIA.names())
    assert unknown_name_message("x", "ab", ["zz", "ab1"]) == "unknown x 'ab'; valid names (closest first): ab1, zz"


def test_registry_add_get_and_refusals():
    registry: Registry[int] = Registry("thing", hint="; or something else")
    assert registry.register("one")(1) == 1 and registry.get("one") == 1
    assert "one" in registry and list(registry) == ["one"] and len(registry) == 1
    with pytest.raises(ConfigError, match="already registered"):
        registry.add("one", 2)
    with pytest.raises(ConfigError, match="without ':'"):
        registry.add("a:b", 3)
    with pytest.raises(UnknownNameError, match="unknown thing 'on'.*: one; or something else$"):
        registry.get("on")
