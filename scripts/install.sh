#!/usr/bin/env bash
# Installs rlpruner and its dependencies into the current Python environment.
# torch is installed first and pinned: where a local CPU wheel of that version is configured (as on
# our CI machines) pip takes it instead of downloading the multi-GB CUDA build; on a CUDA machine
# the same pin resolves to the regular CUDA wheel. An already-installed torch is left alone.
set -euo pipefail
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${RLPRUNER_TORCH_VERSION:-2.13.0}
if ! "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    "$PYTHON" -m pip install "torch==${TORCH_VERSION}" || "$PYTHON" -m pip install torch
fi
"$PYTHON" -m pip install -e ".[dev]"
# timm for the tests of `--model timm:NAME`. Its metadata requires torchvision, which would pull
# another torch build here, so timm comes without dependencies and its pure-Python ones are listed;
# the tests supply a torchvision stand-in where the real one cannot be imported (tests/stand_ins).
if ! "$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('timm') is None)"; then
    "$PYTHON" -m pip install pyyaml huggingface_hub
    "$PYTHON" -m pip install --no-deps "timm>=0.9"
fi
