#!/usr/bin/env bash
# Pack CPU torch for Python 3.11 into parts small enough to ride along with the GPU kit's parts, so
# that one interpreter on the GPU machine has TensorRT 8.6 (the kit) and torch, as an NGC container does.
#
# Usage, from the project root, after bash ../shared/gpu/pack.sh (writes .torchkit/part-NN, 10 MiB each,
# ignored by git):  bash scripts/pack_torchkit.sh [torch wheel]
# Carry one .torchkit part with each kit part: both fit one 64 MiB call. There, before the kit's recv:
#   mkdir -p /tmp/torchkit && mv .torchkit/* /tmp/torchkit/
# and `bash scripts/gpu_visit.sh main` unpacks it to /opt/torchkit and writes the gpukit-both launcher.
set -euo pipefail
WHEEL=${1:-$(ls /opt/wheels/torch-2.13.0+cpu-cp311-*.whl 2>/dev/null | head -1)}
[ -s "$WHEEL" ] || { echo "pack_torchkit: no CPU torch wheel for cp311 (pass its path)" >&2; exit 2; }
OUTDIR=.torchkit
EXCLUDE=$(git rev-parse --git-path info/exclude)
grep -qxF '/.torchkit/' "$EXCLUDE" 2>/dev/null || echo '/.torchkit/' >> "$EXCLUDE"
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
unzip -q "$WHEEL" -d "$T/site"
# What inference export needs: drop C++ headers, test binaries and tests (about 190 MB of 700),
# keeping torch_shm_manager, which `import torch` looks for.
mkdir -p "$T/keep" && cp "$T/site/torch/bin/torch_shm_manager" "$T/keep/"
rm -rf "$T/site/torch/include" "$T/site/torch/bin" "$T/site/torch/test" "$T/site/torch/share/cmake"
mkdir -p "$T/site/torch/bin" && cp "$T/keep/torch_shm_manager" "$T/site/torch/bin/"
# torch's own requirements (pure Python, plus markupsafe) for cp311.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_17_x86_64 -d "$T/deps" filelock typing-extensions sympy mpmath networkx jinja2 markupsafe fsspec
for w in "$T"/deps/*.whl; do unzip -q -o "$w" -d "$T/site"; done
rm -rf "$T"/site/*.dist-info/RECORD
mkdir -p "$OUTDIR" && rm -f "$OUTDIR"/part-* "$OUTDIR"/extra.tar.zst
tar -C "$T/site" -cf - . | zstd -T0 -19 -q | split -b 10M -d -a 2 - "$OUTDIR/part-"
(cd "$OUTDIR" && sha256sum part-* > parts.sha256)
ls "$OUTDIR"/part-* | wc -l | xargs echo "torch kit parts:"
