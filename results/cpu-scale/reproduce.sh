#!/usr/bin/env bash
# The CPU-scale reproduction of MemMamba (arXiv 2510.03279), end to end:
#   bash results/cpu-scale/reproduce.sh            # every stage
#   bash results/cpu-scale/reproduce.sh eval       # one stage: train | convert | eval | latency | report
# MemMamba, our Mamba (use_memory=False) and a same-size Llama are trained with one config
# (train.json: data, tokenizer, seed, steps, batch, learning rate); only --model differs. A
# DeciMamba-style baseline is derived from the trained Mamba without training.
# Checkpoints go to runs/cpu-scale/ (not committed); results and the report to this folder.
set -euo pipefail
cd "$(dirname "$0")/../.."
HERE=results/cpu-scale
RUNS=${RUNS:-runs/cpu-scale}
read -r -a MODELS <<< "${MODELS:-memmamba mamba llama}"
stage=${1:-all}

checkpoint() {
  if [[ $1 == decimamba ]]; then echo "$RUNS/decimamba"; return; fi
  ls -d "$RUNS/$1"/checkpoints/step-* | tail -n 1
}

train() {
  for m in "${MODELS[@]}"; do
    memmamba train --config "$HERE/train.json" --model "$m" --out-dir "$RUNS/$m" --no-progress
    cp "$RUNS/$m/summary.json" "$HERE/train/$m-summary.json"
    cp "$RUNS/$m/log.jsonl" "$HERE/train/$m-log.jsonl"
  done
}

convert() {
  # The DeciMamba-style baseline: the trained Mamba, decimating at its middle layer down to
  # the training length (training-free, as in DeciMamba).
  memmamba convert decimamba "$(checkpoint mamba)" "$RUNS/decimamba" --base-length 2048 --quiet
}

evaluate() {
  for m in "${MODELS[@]}" decimamba; do
    local ck out single=32768
    ck=$(checkpoint "$m")
    out="$HERE/eval/$m"
    local ppl_lengths="1000 2000 4000 10000 20000 30000 60000"
    local passkey_lengths="1024 2048 4096 8192 16384 32768 65536 131072"
    # A Transformer's attention is quadratic: its grids stop where a CPU run stays short.
    if [[ $m == llama ]]; then
      ppl_lengths="1000 2000 4000 10000 20000"
      passkey_lengths="1024 2048 4096 8192 16384"
    fi
    # DeciMamba decimates a whole prompt in one forward (no chunked prefill).
    [[ $m == decimamba ]] && single=140000
    local common=(--model "$ck" --name "$m" --out "$out" --quiet --max-single-tokens "$single")
    memmamba eval ppl "${common[@]}" --lengths $ppl_lengths --windows 4
    memmamba eval passkey "${common[@]}" --variant exact --lengths $passkey_lengths --samples 1
    memmamba eval docret "${common[@]}" --noise 10 20 40 --questions 10
    # Fidelity and the probes score every position, where DeciMamba does not decimate: its
    # numbers would be the Mamba's.
    [[ $m == decimamba ]] && continue
    memmamba eval fidelity "${common[@]}" --lengths 1000 4000 16000 --gaps 1 2 --max-books 2
    memmamba eval mqar "${common[@]}" --task induction --seq-lens 256 1024 --examples 32
  done
}

latency() {
  # Prefill plus 128 greedy tokens; the weights do not change the cost, so fresh models are
  # timed (same shape as the trained ones). Needs a quiet machine.
  memmamba bench model --shapes small --modes latency --impls mamba memmamba --peers llama \
    --peer-modes latency --lengths 1024 4096 8192 --threads 2 --out-dir "$HERE/latency" --quiet
}

report() {
  memmamba report "$HERE/eval" "$HERE/latency" "$HERE/train" --out "$HERE/REPORT.md"
}

mkdir -p "$HERE/train" "$HERE/eval"
case $stage in
  all) train; convert; evaluate; latency; report ;;
  train) train ;;
  convert) convert ;;
  eval) evaluate ;;
  latency) latency ;;
  report) report ;;
  *) echo "unknown stage '$stage'; use all, train, convert, eval, latency or report" >&2; exit 2 ;;
esac
