#!/usr/bin/env bash
# The GPU benchmark in three device calls (the machine goes back after 30 s idle, so they
# follow each other at once; bench/device/README.md). Run from the repository root there:
#   1: carry .ortgpu/p01 + .devshared   bash bench/device/gpu_session.sh 1
#   2: carry .ortgpu/p00                bash bench/device/gpu_session.sh 2
#   3:                                  bash bench/device/gpu_session.sh 3
# The validator on CUDA in two calls: `keep` carrying .ortgpu/p01 + .devshared, then `v`
# carrying .ortgpu/p00; the CUDA tests likewise with `t` instead of `v`.
# Work and results: /tmp/gb (kept while the machine stays warm); results copied to $OUT.
# Carried paths last one call only (each call replaces the ignored paths it does not carry),
# so every call first copies what it carried to /tmp/keep, which stays while the machine does.
set -uo pipefail
W=/tmp/gb K=/tmp/keep
mkdir -p $W $K
[ -d .devshared ] && cp -r .devshared $K/
for p in .ortgpu/p[0-9][0-9]; do [ -f "$p/part" ] && cp "$p/part" "$K/$(basename "$p")"; done
D=$K/.devshared
B=(--tokenizer $D/tokenizer)
T=(--tokenizer $D/tokenizer --texts $D/texts.jsonl)
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
INT4=${INT4:-"int4:--method=rtn:--min-cosine=0.9"}
save() { tar czf "$OUT/gb.tgz" -C $W results $(cd $W && ls *.log 2>/dev/null); }
# the export code is tested with onnx-ir 1.1; the image has 1.0 (.devshared/site holds 1.1)
export PYTHONPATH=/tmp/ortgpu:$D/site:$PWD
show() { for f in $W/*.log; do echo "== $f"; tail -n "${1:-4}" "$f" | cut -c1-400; done; }
case "$1" in
1)
  pkill -f bench_gpu.py; pkill -f qexport.cli; sleep 1; rm -rf $W/*
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
  python3 -c "import torch, transformers, onnx, onnx_ir, tokenizers, numpy; print('torch', torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__, 'onnx', onnx.__version__, 'onnx_ir', onnx_ir.__version__, 'numpy', numpy.__version__)"
  (setsid nohup python3 bench/bench_gpu.py export --workdir $W "${B[@]}" --precisions fp16 bf16 < /dev/null > $W/export-float.log 2>&1 &)
  (setsid nohup python3 bench/bench_gpu.py torch --workdir $W "${T[@]}" < /dev/null > $W/torch.log 2>&1 &)
  sleep 25; show ;;
2)
  bash bench/device/install_ort_gpu.sh || exit 1
  for _ in $(seq 1 100); do [ -f $W/results/torch.json ] && break; sleep 5; done
  (setsid nohup python3 bench/bench_gpu.py export --workdir $W "${B[@]}" --precisions int8 "$INT4" < /dev/null > $W/export-quant.log 2>&1 &)
  sleep 5; show 8 ;;
3)
  for a in fp16 bf16 int8 int4-rtn-0.9; do
    for _ in $(seq 1 120); do [ -f "$W/results/export-$a.json" ] && break; sleep 5; done
    [ -f "$W/$a/qexport.json" ] || { echo "no artifact $a"; continue; }
    timeout 240 python3 bench/bench_gpu.py ort "$a" --workdir $W "${T[@]}" > "$W/ort-$a.log" 2>&1 || echo "ort $a failed: $(tail -3 $W/ort-$a.log)"
    if [ "$a" = fp16 ]; then
      ORT_DISABLE_FLASH_ATTENTION=1 timeout 200 python3 bench/bench_gpu.py ort fp16 --workdir $W "${T[@]}" --long 32768 > $W/ort-fp16-noflash.log 2>&1 || echo "noflash failed"
    fi
    save
  done
  python3 bench/bench_gpu.py report --workdir $W --out $W/results/table.md
  save; show 3 ;;
keep) ls -la $K ;;  # only copy what this call carried
v)  # qexport validate on CUDA (the validator's GPU memory / MFU paths): carry p00 after `keep`
  bash bench/device/install_ort_gpu.sh || exit 1
  python3 -m qexport.cli -q onnx random:qwen3-embedding-0.6b -o $W/v06 --precision fp16 \
    --tokenizer $D/tokenizer --overwrite || exit 1
  python3 -m qexport.cli validate $W/v06 --reference random:qwen3-embedding-0.6b --device cuda \
    --report $W/results/validate-cuda --lengths 16,128,512,2048 2>&1 | tail -40
  tar czf "$OUT/validate.tgz" -C $W/results validate-cuda ;;
t)  # the CUDA tests (tests/runtime/test_cuda.py): carry p00 after `keep`
  bash bench/device/install_ort_gpu.sh || exit 1
  python3 -m pytest -q -p no:cacheprovider tests/runtime/test_cuda.py -rs 2>&1 | tail -15 ;;
*) show 20; save ;;
esac
