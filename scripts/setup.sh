#!/usr/bin/env bash
# Create .venv and install smolvla (editable) with the extras named in $1 (e.g. "dev"). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# torch first and pinned: 2.13.0 is the CPU wheel on this machine; anything else may pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q "torch==2.13.0"
.venv/bin/python -m pip install -q -e ".${1:+[$1]}"
# Offscreen MuJoCo rendering (the sim extra) needs Mesa's EGL; install it where it is missing and we may.
if [[ ",${1:-}," == *",sim,"* ]] && ! ldconfig -p | grep -q "libEGL_mesa.so"; then
    packages="libegl1 libegl-mesa0 libgl1-mesa-dri"
    if [[ $(id -u) == 0 ]] && command -v apt-get > /dev/null; then
        apt-get update -qq && apt-get install -y -qq $packages
    else
        echo "warning: Mesa EGL not found; simulation needs: apt-get install $packages" >&2
    fi
fi
