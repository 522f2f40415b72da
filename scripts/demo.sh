#!/usr/bin/env bash
# The README's main command: install with the simulator extra, then run `smolvla demo` (collect Meta-World demos,
# train a small SmolVLA from scratch, evaluate it closed-loop). Extra arguments go to the demo, e.g. --quick.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh sim
export OMP_WAIT_POLICY=PASSIVE
export HF_HUB_OFFLINE=1  # the demo and the tests never touch the network (hub ids resolve from the local cache only)
.venv/bin/smolvla demo "$@"
