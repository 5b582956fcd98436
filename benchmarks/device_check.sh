#!/usr/bin/env bash
# One GPU check, run from the repository root on a machine with CUDA:
#   bash benchmarks/device_check.sh OUT_DIR
# It runs the CUDA tests, the max-size-first verification and the CUDA benchmarks, one after the other
# (the benchmarks last and alone: they time things), and writes every log and figure into OUT_DIR.
set -uo pipefail
out=${1:?usage: bash benchmarks/device_check.sh OUT_DIR}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

python3 -c "import torch, triton, kornia; print(torch.cuda.get_device_name(), 'torch', torch.__version__,
'triton', triton.__version__, 'kornia', kornia.__version__)" | tee "$out/device.txt"
df -h /dev/shm | tee -a "$out/device.txt"  # the batch ring's slots live there

start=$SECONDS
timeout -s TERM 150 python3 -m fastresize memory --device cuda --no-progress --out "$out/memory" \
    > "$out/memory.txt" 2>&1
echo "memory: rc=$? in $((SECONDS - start)) s" | tee -a "$out/device.txt"

start=$SECONDS
timeout 240 python3 -m pytest -p no:cacheprovider -q -rs -m cuda tests \
    tests/test_stepping.py::test_a_real_timm_scheduler > "$out/tests.txt" 2>&1
echo "tests: rc=$? in $((SECONDS - start)) s" | tee -a "$out/device.txt"

# One suite at a time, each with its own results file: a suite that runs out of time loses only its own.
export FASTRESIZE_FOLDER_BENCH=400,5  # the image-folder recipes at the recorded size
for suite in transform loader; do
    start=$SECONDS
    timeout 200 python3 -m pytest -p no:cacheprovider -q "benchmarks/test_${suite}_bench.py" -k cuda \
        --benchmark-json="$out/bench-$suite.json" > "$out/bench-$suite.txt" 2>&1
    echo "$suite benchmarks: rc=$? in $((SECONDS - start)) s" | tee -a "$out/device.txt"
done
python3 benchmarks/ratios.py "$out"/bench-*.json > "$out/ratios.txt" 2>&1
tail -n 3 "$out/tests.txt" "$out"/bench-*.txt
