#!/usr/bin/env bash
# Issue 16, item 6: the GPU path in one short run, on a machine with an NVIDIA GPU. Writes JSON lines and the
# machine's description under $OUT (default ./gpu-results); about 8 minutes. Not run in CI (no GPU there):
# the CPU tests exercise the same code through onnxruntime's CPU provider.
#   bash bench/gpu_run.sh            # set up (onnxruntime-gpu, as make setup picks on a machine with a driver)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-results}
mkdir -p "$OUT"
step() { echo "[$(date +%H:%M:%S)] $*" >&2; }

step "machine"
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader; nproc; free -g | head -2; } \
  > "$OUT/machine.txt" 2>&1 || true
step "setup (make setup installs onnxruntime-gpu where nvidia-smi works)"
make setup > "$OUT/setup.log" 2>&1
# TensorRT's provider, where the package registry has it for this Python (optional: its absence is recorded).
.venv/bin/pip install -q tensorrt > "$OUT/tensorrt.log" 2>&1 || echo "tensorrt did not install" >> "$OUT/tensorrt.log"
.venv/bin/python - > "$OUT/providers.json" <<'PY'
import json, onnxruntime as ort
print(json.dumps({"onnxruntime": ort.__version__, "available": ort.get_available_providers(), "device": ort.get_device()}))
PY
cat "$OUT/providers.json" >&2
step "reference model"
.venv/bin/python -m models.reference --out "$OUT/reference" >&2

step "raw ONNX Runtime against Lineside's runtime, batch 1, 8, 32 (both models)"
for model in bundled "$OUT/reference/reference.manifest.json"; do
  flag=(); [ "$model" != bundled ] && flag=(--model "$model")
  timeout 300 .venv/bin/lineside bench runtime --seconds 2 --batches 1 --batches 8 --batches 32 --threads 1 \
    "${flag[@]}" --json >> "$OUT/runtime.jsonl"
done

step "end to end with 1, 2, 4 and 8 ingress replicas (the MQTT side on the machine's cores)"
for n in 1 2 4 8; do
  timeout 240 .venv/bin/lineside bench pipeline --duration 10 --robots 32 --ingress-replicas "$n" \
    --model "$OUT/reference/reference.manifest.json" --json >> "$OUT/pipeline.jsonl" || echo "ingress $n failed" >&2
done

step "decoding on the GPU: nvJPEG through torchvision.io.decode_jpeg(device='cuda'), against PIL on the CPU"
.venv/bin/pip install -q torch torchvision > "$OUT/torch.log" 2>&1 || echo "torch did not install" >> "$OUT/torch.log"
.venv/bin/python - > "$OUT/decode.json" <<'PY' || echo '{"nvjpeg": "unavailable"}' > "$OUT/decode.json"
import io, json, time
import torch, torchvision.io as tio
from PIL import Image
from robots.simulate import render_pool
frames = [data for _, data in render_pool(64, jpeg_only=True)]
def rate(fn, seconds=3.0):
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn(); done += len(frames)
    return done / (time.perf_counter() - start)
cpu = rate(lambda: [Image.open(io.BytesIO(f)).convert("RGB").resize((224, 224)) for f in frames])
tensors = [torch.frombuffer(bytearray(f), dtype=torch.uint8) for f in frames]
def gpu():
    out = tio.decode_jpeg(tensors, device="cuda")
    torch.nn.functional.interpolate(torch.stack([torch.nn.functional.interpolate(o[None].float(), size=(224, 224))[0] for o in out]), size=(224, 224))
    torch.cuda.synchronize()
gpu()
print(json.dumps({"pil_cpu_fps": round(cpu, 1), "nvjpeg_gpu_fps": round(rate(gpu), 1)}))
PY
cat "$OUT/decode.json" >&2
step "done: $OUT"
