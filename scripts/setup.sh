#!/usr/bin/env bash
# Create .venv and install gentune with everything it needs (torch from this machine's local wheels).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
# torch first, pinned to the local build: a bare `torch` requirement would pull a multi-GB CUDA wheel
python -c "import torch, torchvision" 2>/dev/null || python -m pip install -q "torch==2.14.1" "torchvision==0.29.1" 2>&1 | grep -v "^WARNING: Location" || true
# skip the editable install when pyproject.toml has not changed since the last one (a re-run takes seconds)
STAMP=.venv/.gentune-pyproject.sha256
if ! sha256sum -c --status "$STAMP" 2>/dev/null || ! python -c "import search.cli" 2>/dev/null; then
  rm -f "$STAMP"
  python -m pip install -q -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
fi
python -c "import torch, ray, optuna, mlflow, pytorch_fid, dlib, search.cli; print('gentune: environment ready in .venv')"
[ -f "$STAMP" ] || sha256sum pyproject.toml > "$STAMP"
