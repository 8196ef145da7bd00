#!/usr/bin/env bash
# One GPU-sandbox visit in phases (each phase fits one 10-minute device call). Run from the repo root
# on the lent GPU machine after the kit is unpacked (bash .gpukit/bin/setup.sh), e.g.:
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh small     # export, tests/gpu, mobilenet_v2 fp16
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh fp16tf32  # resnet50 fp16 (+ timing-cache rebuild), tf32
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh int8      # resnet50 int8, implicit entropy calibration
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh qdq       # resnet50 int8, explicit Q/DQ from the quantize stage
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh probe     # which tiny networks give a readable timing cache
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh main      # tests/gpu, and
#        `python pipeline/run.py precision=int8` in ONE interpreter with TensorRT and (CPU) torch (needs the torch kit:
#        scripts/pack_torchkit.sh here, its parts carried to /tmp/torchkit there)
#   export PATH=/opt/gpukit/bin:$PATH; bash scripts/gpu_visit.sh cache     # resnet50 fp16: cold / warm-cache / no-cache builds
# Each configuration runs the pipeline (pipeline/run.py, TensorRT interpreter) on an ONNX exported with
# the torch interpreter, then scripts/gpu_evidence.py profiles the same engine again and times it with
# benchmarks/trt_execute_loop.py. Results go to outputs/gpu/ and, if $OUT is set, to $OUT.
set -uo pipefail
PHASE=${1:?phase: plan | plan2 | split | explain | streams | sweep1 | tput | lat | i13prune | i13digits | i12diff | i13build | i13wide | i12bert | small | fp16tf32 | int8 | qdq | qdq1 | probe | main | cache | tokens | bert-fp16 | bert-int8 | rn50}
G=outputs/gpu
mkdir -p "$G/onnx" "$G/results" "$G/runs"
OUTDIR=${OUT:-$G/out}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/log-$PHASE.txt"
export PYTHONUNBUFFERED=1
exec > >(tee -a "$LOG") 2>&1
echo "== phase $PHASE $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv

export_models() {
  [ -s "$G/onnx/resnet50.onnx" ] && [ -s "$G/onnx/mobilenet_v2.onnx" ] && return 0
  # The pipeline's own entry point first; the export script if run.py cannot export here.
  for m in resnet50 mobilenet_v2; do
    gpukit-torch pipeline/run.py model=$m batch_size=8 stages=[export] backend=onnxruntime \
      hydra.run.dir=$G/runs/export-$m && cp "$G/runs/export-$m/$m.onnx" "$G/onnx/$m.onnx" || true
  done
  [ -s "$G/onnx/resnet50.onnx" ] && [ -s "$G/onnx/mobilenet_v2.onnx" ] || \
    gpukit-torch scripts/gpu_export.py "$G/onnx" resnet50 mobilenet_v2
  ls -la "$G/onnx"
}

# run_config MODEL PRECISION BATCH [extra evidence args]
run_config() {
  local m=$1 p=$2 b=$3; shift 3
  local name="$m-$p-bs$b" t0=$SECONDS
  echo "== $name: pipeline/run.py"
  gpukit-trt pipeline/run.py model=onnx model.onnx_path=$PWD/$G/onnx/$m.onnx precision=$p batch_size=$b \
    backend=tensorrt stages=[analyze,build,profile,report] profile.warmup_s=2 profile.duration_s=5 \
    hydra.run.dir=$G/runs/$name engines_dir=$PWD/engines
  echo "   run.py rc=$? after $((SECONDS - t0)) s"
  echo "== $name: scripts/gpu_evidence.py"
  # The ONNX copy run.py built from (same bytes -> same engine hash -> the evidence reuses its engine).
  local onnx="$G/onnx/$m.onnx"
  [ -s "$G/runs/$name/$m.onnx" ] && onnx="$G/runs/$name/$m.onnx"
  gpukit-trt scripts/gpu_evidence.py --onnx "$onnx" --model "$m" --precision "$p" --batch "$b" \
    --report "$G/runs/$name/report.json" --out "$G/results/$name.json" "$@"
  echo "   evidence rc=$? after $((SECONDS - t0)) s"
  cp "$G/results/$name.json" "$OUTDIR/" 2>/dev/null || true
}

# run_qdq NAME [overrides...]: the pipeline's quantize stage writes the Q/DQ ONNX (calibrated on ONNX
# Runtime) and the build stage builds it with explicit quantization (no calibrator).
run_qdq() {
  local name=$1 t0=$SECONDS; shift
  echo "== $name: pipeline/run.py $*"
  gpukit-trt pipeline/run.py model=onnx model.onnx_path=$PWD/$G/onnx/resnet50.onnx precision=int8 batch_size=256 \
    backend=tensorrt stages=[analyze,quantize,build,profile,report] data.calib_samples=64 data.num_samples=64 \
    profile.warmup_s=2 profile.duration_s=5 hydra.run.dir=$G/runs/$name engines_dir=$PWD/engines "$@"
  echo "   run.py rc=$? after $((SECONDS - t0)) s"
  gpukit-trt scripts/gpu_evidence.py --onnx "$G/runs/$name/resnet50.int8.qdq.onnx" --model resnet50 --precision int8 \
    --batch 256 --report "$G/runs/$name/report.json" --out "$G/results/$name.json" ${EVIDENCE_EXTRA:-}
  echo "   evidence rc=$? after $((SECONDS - t0)) s"
  cp "$G/results/$name.json" "$OUTDIR/" 2>/dev/null || true
}

# One interpreter with TensorRT (the kit's Python 3.11) and torch (the CPU wheel for 3.11 from the
# torch kit), as in an NGC container: the pipeline's main command runs without the two-launcher split.
torch_kit() {
  if [ ! -d /opt/torchkit/torch ]; then
    local Z; Z=$(command -v zstd || echo .gpukit/bin/zstd)
    (cd /tmp/torchkit && sha256sum --quiet -c parts.sha256) || { echo "torch kit: parts missing"; return 1; }
    mkdir -p /opt/torchkit
    cat /tmp/torchkit/part-* | "$Z" -d -q | tar -C /opt/torchkit -xf -
    # extra.tar.zst (optional): files added after the parts were made (this session's: torch_shm_manager).
    [ ! -f /tmp/torchkit/extra.tar.zst ] || "$Z" -d -q -c /tmp/torchkit/extra.tar.zst | tar -C /opt/torchkit -xf -
  fi
  cat > /opt/gpukit/bin/gpukit-both <<'EOF'
#!/bin/sh
. /opt/gpukit/env.sh
PYTHONPATH="$PWD:/opt/gpukit/site:/opt/torchkit" exec python3.11 "$@"
EOF
  chmod +x /opt/gpukit/bin/gpukit-both
  gpukit-both -c "import torch, tensorrt; print('torch', torch.__version__, 'tensorrt', tensorrt.__version__)"
}

gpu_tests() {
  echo "== tests/gpu (full output in pytest-gpu.txt)"
  gpukit-trt -m pytest tests/gpu -q -rA > "$OUTDIR/pytest-gpu.txt" 2>&1
  echo "   pytest rc=$?"
  tail -12 "$OUTDIR/pytest-gpu.txt"
}

# main_command NAME ARGS...: the user's command, `python pipeline/run.py ARGS`, in one interpreter with
# TensorRT and torch (gpukit-both), every stage from export to report, on the TensorRT backend.
main_command() {
  local name=$1 t0=$SECONDS; shift
  echo "== $name: python pipeline/run.py $*"
  timeout ${STEP_TIMEOUT:-560} gpukit-both pipeline/run.py backend=tensorrt "$@" hydra.run.dir=$G/runs/$name \
    engines_dir=$PWD/engines
  echo "   run.py rc=$? after $((SECONDS - t0)) s"
  cp $G/runs/$name/report.json "$OUTDIR/$name.report.json" 2>/dev/null || true
}

# plan_runs DIR: MiniLM from files made on the CPU machine (DIR holds minilm.onnx, export.json, calib.npz, eval.npz
# and minilm.precision_plan.json): FP16, full INT8 and the sensitivity stage's mixed-precision plan, batch 32.
plan_runs() {
  local d=$1 common
  common="model=minilm data=text batch_size=32 inputs.onnx=$d/minilm.onnx inputs.summary=$d/export.json
    inputs.calib_data=$d/calib.npz inputs.eval_data=$d/eval.npz profile.warmup_s=2 profile.duration_s=5"
  for run in "minilm-fp16-bs32 precision=fp16 stages=[analyze,build,profile,report]" \
             "minilm-int8-bs32 precision=int8 stages=[analyze,quantize,build,profile,report]" \
             "minilm-int8plan-bs32 precision=int8 stages=[analyze,quantize,build,profile,report] quant.plan=$d/minilm.precision_plan.json" \
             "minilm-int8plan-v3-bs32 precision=int8 stages=[analyze,quantize,build,profile,report] quant.plan=$d/minilm.precision_plan.json" \
             "minilm-int8nosplit-bs32 precision=int8 stages=[analyze,quantize,build,profile,report] quant.split_outliers=null" \
             "minilm-int8split-bs32 precision=int8 stages=[analyze,quantize,build,profile,report]" \
             "minilm-int8plan-v5-bs32 precision=int8 stages=[analyze,quantize,build,profile,report] quant.plan=$d/minilm.precision_plan.json"; do
    set -- $run
    case " ${PLAN_RUNS:-minilm-fp16-bs32 minilm-int8-bs32 minilm-int8plan-bs32} " in *" $1 "*) ;; *) continue ;; esac
    local name=$1 t0=$SECONDS; shift
    echo "== $name: pipeline/run.py $*"
    timeout ${STEP_TIMEOUT:-300} gpukit-trt pipeline/run.py backend=tensorrt $common "$@" hydra.run.dir=$G/runs/$name \
      engines_dir=$PWD/engines
    echo "   run.py rc=$? after $((SECONDS - t0)) s"
    cp $G/runs/$name/report.json "$OUTDIR/$name.report.json" 2>/dev/null || true
    cp $G/runs/$name/report.md "$OUTDIR/$name.report.md" 2>/dev/null || true
  done
}

case "$PHASE" in
  plan)
    # Issue 11: the MiniLM precision plan's engine against full INT8 and FP16 (files in /tmp/i11, from the sets that
    # scripts/pack_run.sh makes on the CPU machine, one device call per set).
    cat /tmp/i11/minilm.onnx.part-* > /tmp/i11/minilm.onnx && (cd /tmp/i11 && sha256sum -c minilm.onnx.sha256) || exit 1
    plan_runs /tmp/i11
    ;;
  plan2)
    # Issue 11, second visit: the final plan's engine, then Polygraphy's debug precision anchor (files in .gpukit/pgdp).
    cat /tmp/i11/minilm.onnx.part-* > /tmp/i11/minilm.onnx && (cd /tmp/i11 && sha256sum -c minilm.onnx.sha256) || exit 1
    PLAN_RUNS="minilm-int8plan-v3-bs32" plan_runs /tmp/i11
    printf '#!/bin/sh\nexec gpukit-trt -c "import sys; from polygraphy.tools import main; sys.argv[0] = \\"polygraphy\\"; sys.exit(main())" "$@"\n' > /opt/gpukit/bin/polygraphy
    chmod +x /opt/gpukit/bin/polygraphy
    timeout 500 gpukit-trt benchmarks/polygraphy_debug_precision.py run --dir .gpukit/pgdp --time-limit 400
    echo "   polygraphy anchor rc=$?"
    cp benchmarks/results/sensitivity_anchor_polygraphy_minilm.json "$OUTDIR/" 2>/dev/null || true
    cp -r .gpukit/pgdp/run "$OUTDIR/pgdp-run" 2>/dev/null || true
    ;;
  split)
    # Issue 11, third visit: outlier channel splitting (quant.split_outliers) on MiniLM: full INT8 without and with
    # the split, the v5 plan (split + float layers) and FP16, one engine each.
    cat /tmp/i11/minilm.onnx.part-* > /tmp/i11/minilm.onnx && (cd /tmp/i11 && sha256sum -c minilm.onnx.sha256) || exit 1
    PLAN_RUNS="${PLAN_RUNS:-minilm-int8split-bs32 minilm-int8plan-v5-bs32 minilm-int8nosplit-bs32 minilm-fp16-bs32}" plan_runs /tmp/i11
    ;;
  explain)
    # Issue 12: engines explained per layer (python -m pipeline.explain): ResNet-50 FP16 vs INT8 (explicit Q/DQ from
    # the quantize stage), batch 256; EXPLAIN_MODELS=mobilenet_v2 for MobileNetV2 INT8 alone.
    export_models
    for cfg in ${EXPLAIN_CONFIGS:-resnet50:fp16 resnet50:int8}; do
      m=${cfg%%:*}; p=${cfg##*:}; name="$m-$p-bs256"; stages="[analyze,build,profile,report]"
      [ "$p" = int8 ] && stages="[analyze,quantize,build,profile,report]"
      echo "== $name"; t0=$SECONDS
      timeout ${STEP_TIMEOUT:-280} gpukit-trt pipeline/run.py model=$m inputs.onnx=$PWD/$G/onnx/$m.onnx inputs.summary=$PWD/$G/runs/export-$m/export.json precision=$p \
        batch_size=256 backend=tensorrt stages=$stages data.calib_samples=64 data.num_samples=64 profile.warmup_s=2 \
        profile.duration_s=5 hydra.run.dir=$G/runs/$name engines_dir=$PWD/engines
      echo "   run.py rc=$? after $((SECONDS - t0)) s"
    done
    for pair in ${EXPLAIN_PAIRS:-resnet50:fp16:int8}; do
      m=${pair%%:*}; rest=${pair#*:}; a=${rest%%:*}; b=${rest##*:}
      gpukit-trt -m pipeline.explain $G/runs/$m-$a-bs256 $G/runs/$m-$b-bs256 --labels $a $b --out "$OUTDIR/explain-$m-$a-$b"
      echo "   explain rc=$?"
    done
    for one in ${EXPLAIN_ONE:-}; do
      gpukit-trt -m pipeline.explain $G/runs/$one-bs256 --out "$OUTDIR/explain-$one"
      echo "   explain rc=$?"
    done
    ;;
  streams)
    # Issue 12: ResNet-50 INT8 (explicit Q/DQ) at batch 256 timed with 1, 2 and 4 execution contexts on parallel
    # streams (profile.streams); one engine, built once (the store reuses it).
    export_models
    for n in ${STREAMS:-1 2 4}; do
      name="resnet50-int8-bs256-streams$n"; t0=$SECONDS
      echo "== $name"
      timeout ${STEP_TIMEOUT:-250} gpukit-trt pipeline/run.py model=resnet50 inputs.onnx=$PWD/$G/onnx/resnet50.onnx \
        inputs.summary=$PWD/$G/runs/export-resnet50/export.json precision=int8 batch_size=256 backend=tensorrt \
        stages=[analyze,quantize,build,profile,report] data.calib_samples=64 data.num_samples=64 profile.warmup_s=2 \
        profile.duration_s=5 profile.streams=$n profile.layer_times=false profile.with_copies=false \
        hydra.run.dir=$G/runs/$name engines_dir=$PWD/engines
      echo "   run.py rc=$? after $((SECONDS - t0)) s"
      cp $G/runs/$name/measurement.json "$OUTDIR/$name.measurement.json" 2>/dev/null || true
    done
    ;;
  sweep1)
    # Issue 12: the engine search as a Hydra multirun on the GPU (batch-1 ResNet-50 INT8, CUDA graphs off/on), ending
    # in comparison.md with the Pareto front and the pick.
    [ -s "$G/onnx/resnet50.onnx" ] || { gpukit-torch pipeline/run.py model=resnet50 batch_size=8 stages=[export] \
      backend=onnxruntime hydra.run.dir=$G/runs/export-resnet50 && mkdir -p $G/onnx && \
      cp $G/runs/export-resnet50/resnet50.onnx $G/onnx/resnet50.onnx; }
    timeout ${STEP_TIMEOUT:-400} gpukit-trt pipeline/run.py -m model=resnet50 inputs.onnx=$PWD/$G/onnx/resnet50.onnx \
      inputs.summary=$PWD/$G/runs/export-resnet50/export.json precision=int8 batch_size=1 'profile.cuda_graph=false,true' \
      backend=tensorrt stages=[analyze,quantize,build,profile,report] data.calib_samples=16 data.num_samples=16 \
      profile.warmup_s=1 profile.duration_s=3 profile.layer_times=false profile.with_copies=false \
      hydra.sweep.dir=$G/sweep1 engines_dir=$PWD/engines
    echo "   sweep rc=$?"
    cp $G/sweep1/comparison.md $G/sweep1/comparison.json "$OUTDIR/" 2>/dev/null || true
    ;;
  tput|lat)
    # Issue 12: the target searches as Hydra multiruns on the GPU (presets pipeline/conf/sweep/{throughput,latency}.yaml):
    # tput = ResNet-50 INT8 at batch 2048 (of the preset's 256/1024/2048: one device call holds two engines), FP32 or
    # FP16 inputs, 1 or 2 streams, target 85,000 img/s; lat = batch 1 INT8 with CUDA graphs (the preset also sweeps
    # FP16 and graphs off), optimization level 3 or 5, FP32 or FP16 inputs, target 0.25 ms.
    [ -s "$G/onnx/resnet50.onnx" ] || { gpukit-torch pipeline/run.py model=resnet50 batch_size=8 stages=[export] \
      backend=onnxruntime hydra.run.dir=$G/runs/export-resnet50 && mkdir -p $G/onnx && \
      cp $G/runs/export-resnet50/resnet50.onnx $G/onnx/resnet50.onnx; }
    if [ "$PHASE" = tput ]; then
      args="+sweep=throughput ${TPUT_ARGS:-batch_size=2048} optimize.target_throughput=85000"
    else
      args="+sweep=latency precision=int8 ${LAT_ARGS:-profile.cuda_graph=true} optimize.target_latency_ms=0.25"
    fi
    timeout ${STEP_TIMEOUT:-560} gpukit-trt pipeline/run.py -m $args model=resnet50 inputs.onnx=$PWD/$G/onnx/resnet50.onnx \
      inputs.summary=$PWD/$G/runs/export-resnet50/export.json backend=tensorrt \
      stages=[analyze,quantize,build,profile,report] data.calib_samples=32 data.num_samples=32 profile.warmup_s=2 \
      profile.duration_s=4 profile.with_copies=false hydra.sweep.dir=$G/sweep-$PHASE engines_dir=$PWD/engines
    echo "   sweep rc=$?"
    cp $G/sweep-$PHASE/comparison.md "$OUTDIR/comparison-$PHASE.md" 2>/dev/null || true
    (cd $G && tar -cf "$OUTDIR/sweep-$PHASE.tar" sweep-$PHASE/comparison.* sweep-$PHASE/*/report.* \
      sweep-$PHASE/*/explain.* sweep-$PHASE/*/measurement.json sweep-$PHASE/*/*.log sweep-$PHASE/*/.hydra 2>/dev/null)
    ;;
  i13prune)
    # Issue 13 (and 12's dense vs 2:4 encoder), part 1 (torch interpreter): models pruned by the prune stage on this
    # machine: ResNet-50 with 2:4 weights, eight wide 3x3 convs with 2:4 weights, a BERT-large-shaped encoder (4
    # layers, hidden 1024, seq 384) with 2:4 weights, and (I13_CHANNELS=1) ResNet-50 with half its channels.
    # Torch-Pruning travels as a wheel in .whl/ (pure Python), unpacked onto the torch launcher's path.
    python3 -m zipfile -e .whl/torch_pruning-*.whl /opt/gpukit/purepy >/dev/null && echo "torch_pruning unpacked"
    WIDE="model=custom model.path=$PWD/benchmarks/models/wide_convs.py model.class_name=WideConvs model.input_kind=image model.input_shape=[512,28,28]"
    ENC="model=bert model.layers=4 model.hidden=1024 model.heads=16 model.intermediate=4096 model.input_shape=[384]"
    jobs=("r50-24:model=resnet50 prune.sparse24=true precision=int8" "wide-24:$WIDE prune.sparse24=true precision=int8"
          "enc-24:$ENC prune.sparse24=true precision=fp16")
    [ -n "${I13_CHANNELS:-}" ] && jobs+=("r50-c50:model=resnet50 prune.channels=0.5 precision=int8")
    for job in "${jobs[@]}"; do
      name=${job%%:*}; t0=$SECONDS
      timeout 200 gpukit-torch pipeline/run.py ${job#*:} data=random stages=[prune] prune.finetune_epochs=0 \
        data.num_samples=8 hardware=h200 backend=onnxruntime hydra.run.dir=$G/prune/$name engines_dir=$PWD/engines
      echo "   prune $name rc=$? after $((SECONDS - t0)) s"
      cp $G/prune/$name/prune.json "$OUTDIR/prune-$name.json" 2>/dev/null || true
    done
    ;;
  i13digits)
    # Issue 13: digits_resnet made on the CPU machine by the user's command with stages=[export,(prune,)quantize,qat]
    # (.gpukit/dr/dense and .gpukit/dr/c50 = prune.channels=0.5; this machine has no scikit-learn for the digits), then
    # the rest of the chain here: the QAT Q/DQ (the run's own) and the PTQ Q/DQ engines, unpruned and pruned, INT8 at
    # batch 2048, and FP16 unpruned.
    common="model=digits_resnet data=digits batch_size=2048 backend=tensorrt stages=[analyze,build,profile,report] \
      profile.warmup_s=2 profile.duration_s=4 engines_dir=$PWD/engines"
    D=$PWD/.gpukit/dr
    for run in "dr-dense-qat precision=int8 inputs.run=$D/dense" \
               "dr-dense-ptq precision=int8 inputs.run=$D/dense inputs.qdq_onnx=$D/dense/digits_resnet.int8.qdq.onnx" \
               "dr-c50-qat precision=int8 inputs.run=$D/c50" \
               "dr-c50-ptq precision=int8 inputs.run=$D/c50 inputs.qdq_onnx=$D/c50/digits_resnet.pruned.int8.qdq.onnx" \
               "dr-dense-fp16 precision=fp16 inputs.run=$D/dense" \
               "dr-c50-fp16 precision=fp16 inputs.run=$D/c50"; do
      set -- $run; name=$1; shift; t0=$SECONDS
      echo "== $name: pipeline/run.py $*"
      timeout 90 gpukit-trt pipeline/run.py $common "$@" hydra.run.dir=$G/runs/$name
      echo "   run.py rc=$? after $((SECONDS - t0)) s"
    done
    (cd $G && tar -cf "$OUTDIR/i13digits.tar" runs/dr-*/report.* runs/dr-*/run.json runs/dr-*/measurement.json \
      runs/dr-*/*.log 2>/dev/null)
    ;;
  i12diff)
    # Issue 12: the engine diff inside a GPU run's own report (profile.compare_to): digits_resnet FP16, then INT8 (its
    # QAT Q/DQ) compared against it, from the CPU run in .gpukit/dr/dense (as i13digits).
    common="model=digits_resnet data=digits batch_size=2048 backend=tensorrt stages=[analyze,build,profile,report] \
      profile.warmup_s=1 profile.duration_s=3 engines_dir=$PWD/engines inputs.run=$PWD/.gpukit/dr/dense"
    timeout 120 gpukit-trt pipeline/run.py $common precision=fp16 hydra.run.dir=$G/runs/diff-fp16
    echo "   fp16 rc=$?"
    timeout 120 gpukit-trt pipeline/run.py $common precision=int8 profile.compare_to=$PWD/$G/runs/diff-fp16 \
      hydra.run.dir=$G/runs/diff-int8
    echo "   int8 vs fp16 rc=$?"
    (cd $G/runs && tar -cf "$OUTDIR/i12diff.tar" diff-*/report.* diff-*/explain.* diff-*/explain_diff.png \
      diff-*/measurement.json diff-*/run.json 2>/dev/null)
    ;;
  i13build)
    # Part 2 (TensorRT interpreter): ResNet-50 INT8 at batch 256, dense vs 2:4 (and half channels when pruned), sparse
    # tactics allowed, one multirun (one process: the timing cache stays warm between its builds).
    common="precision=int8 backend=tensorrt stages=[analyze,quantize,build,profile,report] build.sparse_weights=true \
      data.calib_samples=16 data.num_samples=16 profile.warmup_s=2 profile.duration_s=4 profile.with_copies=false engines_dir=$PWD/engines"
    R=$PWD/$G/prune/r50-24; runs="$R"
    [ -s $G/prune/r50-c50/resnet50.pruned.onnx ] && runs="$runs,$PWD/$G/prune/r50-c50"
    timeout 330 gpukit-trt pipeline/run.py -m model=resnet50 batch_size=256 "inputs.onnx=$R/resnet50.dense.onnx,$R/resnet50.pruned.onnx" \
      inputs.summary=$R/prune.export.json $common hydra.sweep.dir=$G/sweep-r50sparse
    echo "   r50 sweep rc=$?"
    [ -s $G/prune/r50-c50/resnet50.pruned.onnx ] && timeout 150 gpukit-trt pipeline/run.py model=resnet50 batch_size=256 \
      inputs.run=$PWD/$G/prune/r50-c50 $common hydra.run.dir=$G/runs/r50-c50
    d=$G/sweep-r50sparse; gpukit-trt -m pipeline.explain $d/0-* $d/1-* --labels dense 2:4 --out $G/explain-r50-24
    cp $d/comparison.md "$OUTDIR/comparison-r50sparse.md" 2>/dev/null || true
    (cd $G && tar -cf "$OUTDIR/i13build.tar" sweep-r50sparse/comparison.* sweep-r50sparse/*/report.* sweep-r50sparse/*/explain.* \
      sweep-r50sparse/*/measurement.json sweep-r50sparse/*/*.log explain-r50-24 runs/r50-c50/report.* 2>/dev/null)
    ;;
  i13wide)
    # Part 3: the wide 3x3 stack INT8 at batch 64 and the BERT-large-shaped encoder FP16 at batch 32, dense vs 2:4 with
    # sparse tactics allowed, each pair explained layer by layer (the engine diff and the builder's sparsity lines).
    common="backend=tensorrt build.sparse_weights=true data.calib_samples=16 \
      data.num_samples=16 profile.warmup_s=2 profile.duration_s=4 profile.with_copies=false engines_dir=$PWD/engines"
    W=$PWD/$G/prune/wide-24; E=$PWD/$G/prune/enc-24
    for v in dense pruned; do
      timeout 120 gpukit-trt pipeline/run.py model=custom model.path=$PWD/benchmarks/models/wide_convs.py \
        model.class_name=WideConvs model.input_kind=image 'model.input_shape=[512,28,28]' batch_size=64 precision=int8 \
        inputs.onnx=$W/custom.$v.onnx inputs.summary=$W/prune.export.json $common \
        stages=[analyze,quantize,build,profile,report] hydra.run.dir=$G/runs/wide-$v
      echo "   wide $v rc=$?"
    done
    gpukit-trt -m pipeline.explain $G/runs/wide-dense $G/runs/wide-pruned --labels dense 2:4 --out $G/explain-wide
    for v in dense pruned; do
      timeout 150 gpukit-trt pipeline/run.py model=bert model.layers=4 model.hidden=1024 model.heads=16 \
        model.intermediate=4096 'model.input_shape=[384]' data=random batch_size=32 precision=fp16 \
        inputs.onnx=$E/bert.$v.onnx inputs.summary=$E/prune.export.json $common stages=[analyze,build,profile,report] \
        hydra.run.dir=$G/runs/enc-$v
      echo "   encoder $v rc=$?"
    done
    gpukit-trt -m pipeline.explain $G/runs/enc-dense $G/runs/enc-pruned --labels dense 2:4 --out $G/explain-enc
    (cd $G && tar -cf "$OUTDIR/i13wide.tar" explain-wide explain-enc runs/wide-*/report.* runs/wide-*/explain.* \
      runs/enc-*/report.* runs/enc-*/explain.* runs/wide-*/measurement.json runs/enc-*/measurement.json 2>/dev/null)
    ;;
  i12bert)
    # Issue 12: BERT-base INT8 vs FP16 (seq 128, batch 32) and a BERT-large-shaped encoder (4 layers, hidden 1024, seq
    # 384, batch 32) dense vs 2:4 in FP16 with sparse tactics allowed, each pair explained layer by layer.
    ENC="model=bert model.layers=4 model.hidden=1024 model.heads=16 model.intermediate=4096 model.input_shape=[384]"
    [ -s $G/runs/export-bert/bert.onnx ] || timeout 150 gpukit-torch pipeline/run.py model=bert batch_size=8 stages=[export] \
      backend=onnxruntime hydra.run.dir=$G/runs/export-bert
    [ -s $G/prune/enc-24/bert.pruned.onnx ] || timeout 150 gpukit-torch pipeline/run.py $ENC data=random stages=[prune] \
      prune.sparse24=true prune.finetune_epochs=0 precision=fp16 hardware=h200 backend=onnxruntime data.num_samples=8 \
      hydra.run.dir=$G/prune/enc-24 engines_dir=$PWD/engines
    common="backend=tensorrt batch_size=32 data.calib_samples=32 data.num_samples=32 profile.warmup_s=2 profile.duration_s=4 \
      profile.with_copies=false engines_dir=$PWD/engines"
    for p in ${BERT_PRECISIONS:-fp16 int8}; do
      st="[analyze,build,profile,report]"; [ $p = int8 ] && st="[analyze,quantize,build,profile,report]"
      timeout 200 gpukit-trt pipeline/run.py model=bert data=text inputs.run=$PWD/$G/runs/export-bert precision=$p \
        stages=$st $common hydra.run.dir=$G/runs/bert-$p-bs32
      echo "   bert $p rc=$?"
    done
    gpukit-trt -m pipeline.explain $G/runs/bert-fp16-bs32 $G/runs/bert-int8-bs32 --labels fp16 int8 --out $G/explain-bert
    for v in dense pruned; do
      timeout 200 gpukit-trt pipeline/run.py $ENC data=random inputs.onnx=$PWD/$G/prune/enc-24/bert.$v.onnx \
        inputs.summary=$PWD/$G/prune/enc-24/prune.export.json precision=fp16 build.sparse_weights=true \
        stages=[analyze,build,profile,report] $common hydra.run.dir=$G/runs/enc-$v
      echo "   encoder $v rc=$?"
    done
    gpukit-trt -m pipeline.explain $G/runs/enc-dense $G/runs/enc-pruned --labels dense 2:4 --out $G/explain-enc
    (cd $G && tar -cf "$OUTDIR/i12bert.tar" explain-bert explain-enc runs/bert-*/report.* runs/bert-*/explain.* \
      runs/enc-*/report.* runs/enc-*/explain.* runs/*/measurement.json prune/enc-24/prune.json 2>/dev/null)
    ;;
  tokens)
    # Issue 10: the transformers end to end (int64 token ids bound as the engine's int32), and tests/gpu.
    torch_kit || exit 1
    gpu_tests
    main_command minilm-fp16-bs32 model=minilm data=text precision=fp16 batch_size=32
    main_command minilm-int8-bs32 model=minilm data=text precision=int8 batch_size=32
    ;;
  bert-fp16)
    torch_kit || exit 1
    main_command bert-fp16-bs32 model=bert data=text precision=fp16 batch_size=32
    ;;
  bert-int8)
    torch_kit || exit 1
    main_command bert-int8-bs32 model=bert data=text precision=int8 batch_size=32
    ;;
  rn50)
    # ResNet-50 INT8 at batch 256 through the main command (NVML telemetry in measurement.json), then the
    # same engine timed by the independent execute loop (benchmarks/trt_execute_loop.py via gpu_evidence.py).
    torch_kit || exit 1
    main_command resnet50-int8-bs256 model=resnet50 precision=int8 batch_size=256 data.calib_samples=64 \
      data.num_samples=256 profile.warmup_s=2 profile.duration_s=5
    cp $G/runs/resnet50-int8-bs256/measurement.json "$OUTDIR/resnet50-int8-bs256.measurement.json" 2>/dev/null || true
    eng=$(python3 -c "import json;print(json.load(open('$G/runs/resnet50-int8-bs256/engine.json'))['engine'])" 2>/dev/null)
    echo "== evidence on $eng"
    timeout 200 gpukit-trt scripts/gpu_evidence.py --onnx "$G/runs/resnet50-int8-bs256/resnet50.int8.qdq.onnx" \
      --model resnet50 --precision int8 --batch 256 --report "$G/runs/resnet50-int8-bs256/report.json" \
      --out "$G/results/resnet50-int8-bs256.json"
    echo "   evidence rc=$?"
    cp "$G/results/resnet50-int8-bs256.json" "$OUTDIR/" 2>/dev/null || true
    ;;
  small)
    export_models
    gpu_tests
    run_config mobilenet_v2 fp16 256
    ;;
  fp16tf32)
    export_models
    run_config resnet50 fp16 256 --rebuild-twice
    run_config resnet50 tf32 256
    ;;
  qdq)
    export_models
    run_qdq resnet50-int8qdq-bs256
    # Variant: the first conv (3 input channels, padded to 32 for INT8 Tensor Cores) left in FP16.
    run_qdq resnet50-int8qdq-firstfp16-bs256 'quant.keep_float=[first]'
    ;;
  qdq1)
    # One Q/DQ engine (the timing cache has its own phase: cache).
    export_models
    run_qdq resnet50-int8qdq-bs256
    ;;
  int8)
    export_models
    run_config resnet50 int8 256
    ;;
  probe)
    echo "== timing-cache probe (tiny networks)"
    gpukit-trt benchmarks/timing_cache.py --probe --out "$G/results/timing_cache-probe.json"
    cp "$G/results/timing_cache-probe.json" "$OUTDIR/" 2>/dev/null || true
    ;;
  main)
    gpu_tests
    echo "== python pipeline/run.py precision=int8 (TensorRT + torch in one interpreter)"
    if torch_kit; then
      t0=$SECONDS
      gpukit-both pipeline/run.py precision=int8 hydra.run.dir=$G/runs/main-int8
      echo "   run.py rc=$? after $((SECONDS - t0)) s"
    fi
    ;;
  cache)
    # TensorRT 8.6.0 here cannot read back any timing-cache file it writes (phase probe), so the three
    # builds run in one process, where the second takes the cache from memory (TC_MODE= for fresh processes).
    export_models
    echo "== timing cache: resnet50 fp16 bs256, cold / warm cache / no cache (${TC_MODE:---in-process})"
    gpukit-trt benchmarks/timing_cache.py ${TC_MODE---in-process} --onnx $G/onnx/resnet50.onnx --model resnet50 \
      --precision fp16 --batch 256 --work-dir $PWD/$G/tc --out "$G/results/timing_cache-resnet50-fp16-bs256.json"
    cp "$G/results/timing_cache-resnet50-fp16-bs256.json" "$OUTDIR/" 2>/dev/null || true
    ;;
esac
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
# Reports, sidecars and loop timings in one tar (what comes back is limited to 8 files).
tar -cf "$OUTDIR/results-$PHASE.tar" $G/results $G/runs/*/report.* $G/runs/*/*.json $G/runs/*/run.log \
  $G/runs/*/.hydra/overrides.yaml engines/*.plan.json $G/onnx/export.json 2>/dev/null
echo "== phase $PHASE done $(date -u +%FT%TZ)"
