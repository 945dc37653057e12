#!/usr/bin/env bash
# Wheels the GPU machine lacks for `bench/run.py --suite gpu` (its image has torch, transformers,
# accelerate, safetensors, numpy and pyyaml, but not pydantic, and its peft may not be the one the
# CPU numbers were measured against). They land in .whl/ (git-ignored), which travels with `carry`.
# Usage: bash bench/gpu_wheels.sh; then, on the device (see docs/benchmarks.md, "GPU suite"):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:src
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl pydantic==2.14.3 pydantic_core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5 peft==0.21.2
ls -la .whl
