#!/usr/bin/env bash
# The GPU checks of the inference issue in one device run (a few minutes of an H100/H200), for a
# session that is lent a machine:   run(command="bash benchmarks/device_check.sh", timeout_s=540)
# It uses that machine's own python3 (PyTorch with CUDA, scikit-image, tifffile, safetensors and
# tqdm are installed there) with this checkout on PYTHONPATH; its output is also written to $OUT.
#   - the GPU test: the CPU's result whole and in batched tiles, bf16 and fp16 in the image's dtype;
#   - benchmarks/speed.py --device cuda: output MP/s per precision, share of the dense bf16 peak,
#     PSNR of bf16 and fp16 against fp32, at 512 and 2048 input;
#   - with real fields in .device_data/ (made here first, and named in the run's carry:
#       echo /.device_data/ >> .git/info/exclude; mkdir -p .device_data
#       ls ../shared/data/bbbc039/images/*.tif | head -8 | xargs cp -t .device_data),
#     msrgan evaluate in fp32, bf16 and fp16 at 300 photons: each image's PSNR against the truth in
#     reduced precision beside fp32's (the issue asks for 0.01 dB at most).
# Every step runs whatever an earlier one did (a device run is too dear to lose the rest to one
# failing test); the script exits 1 if any failed.
set -uo pipefail
status=0
export PYTHONPATH="$PWD" PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/device_check}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt" || status=1
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt" || status=1
python3 -m pytest -q -p no:cacheprovider tests/test_inference.py -k gpu 2>&1 | tee "$OUT/gpu_tests.txt" || status=1
python3 benchmarks/speed.py --device cuda --sizes 512 2048 --repeats 5 2>&1 | tee "$OUT/gpu_speed.txt" || status=1
if [ -d .device_data ]; then
  for precision in fp32 bf16 fp16; do
    python3 -m msrgan_core.cli evaluate --hr .device_data --device cuda --precision "$precision" \
      --degradation bin+300ph --csv "$OUT/evaluate_$precision.csv" -q || status=1
  done
  python3 - "$OUT" <<'PY' | tee "$OUT/precision_psnr.txt"
import csv, sys
def psnr(precision):
    with open(f"{sys.argv[1]}/evaluate_{precision}.csv") as fh:
        return {r["image"]: float(r["psnr"]) for r in csv.DictReader(fh) if r["method"] == "msrgan" and r["image"] != "mean"}
fp32 = psnr("fp32")
for precision in ("bf16", "fp16"):
    gaps = [psnr(precision)[image] - value for image, value in fp32.items()]
    print(f"{precision}: PSNR against the truth minus fp32's over {len(gaps)} images: mean {sum(gaps) / len(gaps):+.4f} dB, "
          f"largest |gap| {max(abs(g) for g in gaps):.4f} dB")
PY
  [ "${PIPESTATUS[0]}" = 0 ] || status=1
fi
exit "$status"
