#!/usr/bin/env bash
# The prepared device run (GPU machine, one call): issue 6's benchmark beside the peer, then part of
# issue 5's grid. Needs, carried into the repo root (ignored folders, see bench/RESULTS.md):
#   .whl/    gguf wheel (the GPU image lacks gguf)
#   .parts/  SmolLM2 GGUF in two parts (smollm2.gguf.part-aa/-ab), ml-1m.zip, hf_peft_lora_bench.py
# Usage there: bash bench/device_run.sh [bench|grid METHOD...]
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 SASRECLLM_CACHE=/tmp/sasrecllm-cache
mkdir -p "$SASRECLLM_CACHE/models" "${OUT:-/tmp/out}"
gguf="$SASRECLLM_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$gguf" ] || cat .parts/smollm2.gguf.part-* > "$gguf"
echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
what=${1:-bench}; shift || true
[ -d data/ml1m-collm ] || python3 -m data_tools prepare ml1m-collm --source .parts/ml-1m.zip --trust-pickle --out data/ml1m-collm
if [ "$what" = bench ]; then
  # about 6-7 minutes on an H100: matmul ceiling, 3 TinyLlama rows, the peer, an ML-1M epoch
  python3 bench/bench.py --epoch --peer .parts/hf_peft_lora_bench.py "$@" 2>&1 | tee "${OUT:-/tmp/out}/bench.txt"
else
  python3 -m sasrecllm_jax.experiments ml1m --ablate --methods "$@" --out "${OUT:-/tmp/out}/ml1m" \
    --set model.llm_overrides='{param_dtype: bfloat16, dtype: bfloat16, attention: cudnn}' 2>&1 | tee "${OUT:-/tmp/out}/grid.txt"
fi
