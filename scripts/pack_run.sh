#!/usr/bin/env bash
# Pack a MiniLM run folder made on the CPU machine for the GPU machine's `plan` phases (scripts/gpu_visit.sh):
#   bash scripts/pack_run.sh RUN_DIR [PLAN_JSON]
# writes .gpukit/i11/set-0, set-1, ...: the ONNX in 40 MB parts (one set per device call, under the carry limit of
# 64 MiB), its sha256, export.json, data/calib.npz, data/eval.npz and the precision plan (RUN_DIR's own, or PLAN_JSON)
# in set-0. On the GPU machine, one call per set:  mkdir -p /tmp/i11 && cp .gpukit/i11/set-N/* /tmp/i11/
# (carry .gpukit/i11/set-N), then e.g.  PLAN_RUNS="minilm-fp16-bs32 minilm-int8-bs32 minilm-int8plan-bs32" \
#   bash scripts/gpu_visit.sh plan
set -euo pipefail
RUN=${1:?run folder with minilm.onnx, export.json, data/ and minilm.precision_plan.json}
PLAN=${2:-$RUN/minilm.precision_plan.json}
for f in "$RUN/minilm.onnx" "$RUN/export.json" "$RUN/data/calib.npz" "$RUN/data/eval.npz" "$PLAN"; do
  [ -s "$f" ] || { echo "missing: $f" >&2; exit 1; }
done
D=.gpukit/i11
rm -rf "$D" && mkdir -p "$D/tmp"
split -b 40M -d "$RUN/minilm.onnx" "$D/tmp/minilm.onnx.part-"
(cd "$RUN" && sha256sum minilm.onnx) > "$D/tmp/minilm.onnx.sha256"
i=0
for part in "$D"/tmp/minilm.onnx.part-*; do
  mkdir -p "$D/set-$i" && mv "$part" "$D/set-$i/"
  i=$((i + 1))
done
mv "$D/tmp/minilm.onnx.sha256" "$D/set-0/"
cp "$RUN/export.json" "$RUN/data/calib.npz" "$RUN/data/eval.npz" "$D/set-0/"
cp "$PLAN" "$D/set-0/minilm.precision_plan.json"
rmdir "$D/tmp"
du -sh "$D"/set-* && echo "$i sets: carry .gpukit/i11/set-N in call N"
