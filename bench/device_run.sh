#!/usr/bin/env bash
# The prepared device run (GPU machine): the speed benchmark beside the peer, then the experiment grid.
# Needs, carried into the repo root (ignored folders, see bench/RESULTS.md):
#   .whl/    gguf wheel (the GPU image lacks gguf)
#   .parts/  hf_peft_lora_bench.py and ml-1m.zip (call 1), the SmolLM2 GGUF in two parts (one per call),
#            amazon-books/{interactions,items}.csv for DATASET=amazon-books
# Usage there:
#   SASRECLLM_COMMIT=<sha> bash bench/device_run.sh bench [bench.py args]     # TinyLlama rows + the peer
#   SASRECLLM_COMMIT=<sha> [DATASET=ml1m|ml1m-cold|amazon-books] bash bench/device_run.sh grid SECONDS METHOD...
# The grid runs configs/experiments/$DATASET/ (default ml1m), stopped after SECONDS, and writes
# $OUT/$DATASET-runs.tgz (every run's results.json, metrics.jsonl, config, scores; no weights) and
# $OUT/$DATASET/SUMMARY.md; methods still running at the deadline are left out of the summary.
# Runs, the phase cache, the assembled GGUF and the compilation cache live in ignored folders of the
# tree (runs/device-DATASET, .cache/), which stay on the machine between back-to-back calls: a grid split
# over calls shares phases (the phase cache). The GGUF is assembled once both
# parts have arrived; before that only mf and sasrec can run. SEEDS="0 1" adds seeds; ABLATE=1 ablations;
# JOBS=N runs N grid processes side by side on the one GPU (methods dealt round-robin; measured on
# an H200, JOBS=2 did about 1.08x the work of one process).
# GRID_ARGS: more experiments arguments, word-split (a dry run on a CPU: ATTN=xla GRID_ARGS="--set
# train.enc_epochs=1 --set data.cpu_max_rows.train=16 --set data.cpu_max_rows.eval=32").
# SASRECLLM_COMMIT: the tree travels without .git; the sender states which clean commit it is.
set -uo pipefail
PY=${PY:-python3}
out=${OUT:-/tmp/out}
mkdir -p "$out"
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export PYTHONUNBUFFERED=1 TQDM_MININTERVAL=20 SASRECLLM_CACHE=${SASRECLLM_CACHE:-$PWD/.cache/sasrecllm}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}  # seeds and phases share compiles
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "commit ${SASRECLLM_COMMIT:-unknown}, $(date -u '+%Y-%m-%d %H:%M UTC')"
dataset=${DATASET:-ml1m}
prepare() {  # the grid's dataset, once per machine (data/ is ignored, so it stays between calls)
  case "$dataset" in
    ml1m) [ -f data/ml1m-collm/dataset.json ] || $PY -m data_tools prepare ml1m-collm --source .parts/ml-1m.zip \
            --trust-pickle --out data/ml1m-collm ;;
    ml1m-cold) [ -f data/ml1m-collm-cold/dataset.json ] || $PY -m data_tools prepare ml1m-collm \
            --source .parts/ml-1m.zip --trust-pickle --cold-items 0.2 --seed 0 --out data/ml1m-collm-cold ;;
    amazon-books) [ -f data/amazon-books/dataset.json ] || $PY -m data_tools prepare amazon-books \
            --source .parts/amazon-books --out data/amazon-books ;;
    *) echo "DATASET=$dataset: use ml1m, ml1m-cold or amazon-books"; return 2 ;;
  esac
}
what=${1:-bench}; shift || true
if [ "$what" = bench ]; then
  # about 4 minutes on an H100: matmul ceiling, 3 TinyLlama rows, the peer; the data is prepared beside it
  [ -f .parts/ml-1m.zip ] && { prepare >"$out/prepare.txt" 2>&1 & }
  timeout -k 10 "${BENCH_SECONDS:-420}" $PY bench/bench.py --peer .parts/hf_peft_lora_bench.py --job-timeout 150 --remat none,cheap "$@" \
    2>&1 | tee "$out/bench.txt"
  wait
else
  secs=$1; shift
  mkdir -p "$SASRECLLM_CACHE/models"
  gguf="$SASRECLLM_CACHE/models/SmolLM2-135M-Instruct.Q4_1.gguf"
  if [ ! -f "$gguf" ] && [ -f .parts/smollm2.gguf.part-aa ] && [ -f .parts/smollm2.gguf.part-ab ]; then
    cat .parts/smollm2.gguf.part-* > "$gguf.partial" && mv "$gguf.partial" "$gguf"
  fi
  if [ -f "$gguf" ]; then
    echo "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53  $gguf" | sha256sum -c || exit 1
  else
    echo "SmolLM2 GGUF not assembled yet ($(ls .parts 2>/dev/null | tr '\n' ' ')): only mf and sasrec can run"
  fi
  prepare || exit 1
  runs=${GRID_OUT:-$PWD/runs/device-$dataset}
  grid() {  # one grid process over the methods given, stopped at the deadline
    timeout -k 15 -s INT "$secs" $PY -m sasrecllm_jax.experiments "$dataset" ${ABLATE:+--ablate} --methods "$@" \
      --out "$runs" --seeds ${SEEDS:-0} --no-summary ${GRID_ARGS:-} \
      --set model.llm_overrides="{param_dtype: bfloat16, dtype: bfloat16, attention: ${ATTN:-cudnn}}" 2>&1
  }
  # how busy the GPU is while the grid runs (the share of each second in which a kernel ran; SmolLM2 training
  # keeps it about 95% busy with one process, so a low figure means setup, compilation or tiny ID models)
  sampler=
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader,nounits -l 1 >"$out/gpu-util.csv" &
    sampler=$!
  fi
  jobs=${JOBS:-1}
  if [ "$jobs" -le 1 ]; then
    grid "$@" | tee "$out/grid.txt"
  else
    # JOBS=N: N grid processes share the GPU, the methods dealt round-robin in the order given (the first N
    # start at once); each takes a 1/N share of the memory instead of JAX's default 75%. Runs write
    # distinct folders; the phase cache and compilation cache take concurrent writers. The processes' kernels
    # take turns on the GPU: on an H200, two did 1.08x the work of one (SmolLM2 steps), so JOBS pays only
    # when one queue would idle the GPU (setup, compilation, host-side evaluation).
    methods=("$@")
    pids=()
    for ((k = 0; k < jobs; k++)); do
      mine=()
      for ((i = k; i < ${#methods[@]}; i += jobs)); do mine+=("${methods[i]}"); done
      [ ${#mine[@]} -gt 0 ] || continue
      XLA_PYTHON_CLIENT_MEM_FRACTION=$(awk "BEGIN {print 0.9 / $jobs}") grid "${mine[@]}" >"$out/grid-$k.txt" &
      pids+=($!)
    done
    # wait for the grid processes only: a bare `wait` also waits for the nvidia-smi sampler, which never
    # ends, and held a call to its limit with no summary written
    wait "${pids[@]}"
    for f in "$out"/grid-*.txt; do echo "=== $f"; tail -n 40 "$f"; done
  fi
  if [ -n "$sampler" ]; then
    kill "$sampler" 2>/dev/null
    awk -F', *' '$1 ~ /^[0-9]+$/ {n++; u += $1; if ($2 > m) m = $2} END {if (n) printf "GPU busy %.0f%% of %d s sampled (JOBS=%s); peak memory %d MiB\n", u / n, n, "'"$jobs"'", m}' "$out/gpu-util.csv"
  fi
  $PY -m sasrecllm_jax.experiments "$dataset" --summary-only --out "$runs" >/dev/null 2>&1
  mkdir -p "$out/$dataset" && cp "$runs"/SUMMARY.md "$runs"/summary.json "$runs"/warm_cold.png "$runs"/curves.png \
    "$out/$dataset/" 2>/dev/null
  tar czf "$out/$dataset-runs.tgz" -C "$runs" --exclude checkpoints --exclude final --exclude tensorboard \
    --exclude run_state.json --exclude phase_cache --exclude '*.lock' runs
  cat "$out/$dataset/SUMMARY.md" 2>/dev/null
fi
