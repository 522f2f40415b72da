#!/usr/bin/env bash
# The README's test command: install with the dev, sim, onnx and peft extras, lint, run the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,sim,onnx,peft
export OMP_WAIT_POLICY=PASSIVE
export HF_HUB_OFFLINE=1  # the demo and the tests never touch the network (hub ids resolve from the local cache only)
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
