#!/usr/bin/env bash
# The README's main command: install, then run the end-to-end smoke job.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export OMP_WAIT_POLICY=PASSIVE
.venv/bin/smolvla smoke "$@"
