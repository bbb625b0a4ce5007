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
