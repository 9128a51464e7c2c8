#!/usr/bin/env bash
# Prepare what a GPU machine without network needs for the GPU benchmarks, from the repo root:
#   .whl/          wheels of moprune's dependencies the machine's image lacks (Python 3.12)
#   .shared_copy/  the CIFAR-10 JPEG zips and the ResNet-56 weights (../shared/data layout)
# Both folders are git-ignored through .git/info/exclude and travel with `carry`.
# Then, on the machine (see docs/benchmarks.md, "GPU"):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD
#   python3 analysis/benchmark_speed.py --device cuda --shared .shared_copy --out docs/benchmarks.md
set -euo pipefail
SHARED=${SHARED:-../shared/data}
mkdir -p "$(git rev-parse --git-path info)"
for d in /.whl/ /.shared_copy/; do
    grep -qxF "$d" "$(git rev-parse --git-path info/exclude)" 2>/dev/null || echo "$d" >> "$(git rev-parse --git-path info/exclude)"
done
mkdir -p .shared_copy/cifar10-jpeg .shared_copy/weights
cp "$SHARED"/cifar10-jpeg/train.zip "$SHARED"/cifar10-jpeg/test.zip .shared_copy/cifar10-jpeg/
cp "$SHARED"/weights/resnet56-*.th .shared_copy/weights/
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d .whl pymoo==0.6.2 autograd cma alive-progress about-time graphemeu Deprecated moocore \
    cffi pycparser platformdirs ultralytics-thop torch-pruning==1.6.1 deap==1.4.4
du -sh .whl .shared_copy
