#!/usr/bin/env bash
# The object-batch benchmark on an accelerator, in at most 8 minutes: the toy
# world and full-size Stable Diffusion v1.5 (random weights, nothing
# downloaded) at 1, 4 and 16 objects per device. Writes toy.json, sd.json,
# their logs and device.txt under $OUT (default ./accelerator_results).
#
#   bash experiments/accelerator_benchmark.sh
#   SKIP_INSTALL=1 bash experiments/accelerator_benchmark.sh  # deps present
#   TOY_OBJECTS=1,4 SD_OBJECTS=1 bash ...  # fewer objects per device
#
# The install is pip install -e '.[cuda12]' (README); JAX_EXTRA=cuda13 or
# tpu picks another jax build, JAX_EXTRA= none (jax already installed).
# Offline, give pip a folder of wheels: PIP_NO_INDEX=1 PIP_FIND_LINKS=DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-./accelerator_results}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
  2>/dev/null | tee "$OUT/device.txt" \
  || echo 'nvidia-smi: none here' | tee "$OUT/device.txt"
if [[ -z "${SKIP_INSTALL:-}" ]]; then
  extra="${JAX_EXTRA-cuda12}"
  timeout 80 python3 -m pip install -q -e ".${extra:+[$extra]}" \
    >"$OUT/install.log" 2>&1 || echo "install failed: see $OUT/install.log"
fi
python3 -c 'import jax; print("jax", jax.__version__, jax.devices())' \
  2>&1 | tee -a "$OUT/device.txt"

# bench NAME SECONDS FLAGS...: one benchmark, cut off after SECONDS (the JSON
# keeps every P finished by then); absl's INFO/WARNING lines go to the log.
bench() {
  local name=$1 seconds=$2
  shift 2
  echo "== $name: $* (at most $seconds s)"
  timeout "$seconds" python3 experiments/benchmark_objects.py --steps=10 \
    --out="$OUT/$name.json" "$@" 2>&1 | tee "$OUT/$name.log" \
    | grep -v '^[IWE][0-9]\{4\} '
  echo "== $name: exit status ${PIPESTATUS[0]} (124: cut off)"
}

bench toy 150 --config=configs/toy.py --objects="${TOY_OBJECTS:-1,4,16}"
bench sd 240 --sd --sd_objects="${SD_OBJECTS:-1,4,16}"
