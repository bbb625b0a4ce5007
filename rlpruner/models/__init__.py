"""The model zoo: one registry, CIFAR-style models (32x32 inputs, other sizes work too).

    from rlpruner.models import create_model, list_models
    model = create_model("resnet56", num_classes=100)            # a zoo model
    model = create_model("mypkg.nets:build", num_classes=10)     # any factory by import path

Each model module registers its factories with `@register_model(name)` when imported below.
"""
from rlpruner.models.registry import (MODELS, SPEC_ATTR, ModelRegistry, create_model, list_models,
                                      model_from_spec, model_spec, register_model, spec_problem)
from rlpruner.registry import unknown_name_message
from rlpruner.models import (convnext, densenet, efficientnet, googlenet, mobilenet,  # noqa: F401
                             resnet, resnext, shufflenet, simple, squeezenet, vgg)

__all__ = ["MODELS", "SPEC_ATTR", "ModelRegistry", "create_model", "list_models", "model_from_spec",
           "model_spec", "register_model", "spec_problem", "unknown_name_message"]
