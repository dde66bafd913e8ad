#!/usr/bin/env bash
# The GPU checks, in one run (about 6 minutes on one GPU; each part has its own limit):
#   - adatune bench on CUDA for vgg11, resnet18 and the transformer block, in fp32 and
#     bf16: a plain step, HD, MARTHE exact and finite-difference, and the autograd floor
#     with adatune's fused double backward (floor) against torch's (floor-torch);
#   - the cheaper steps in fp32 (no memory probe): MARTHE every 4 steps, with the HVP on a
#     quarter of the batch, and both;
#   - one adatune train --tuner marthe end to end on CUDA, with its store.
# Everything goes under OUT (default ./gpu-out): one JSON per bench, the run's store,
# each part's log, and gpu.md, the table for the README. Exits non-zero if a part failed.
#
#   bash benchmarks/gpu.sh            # or: OUT=/somewhere bash benchmarks/gpu.sh
set -uo pipefail
OUT=${OUT:-gpu-out}
LIMIT=${LIMIT:-100}      # seconds per bench part
mkdir -p "$OUT"
failed=0

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
    echo "gpu.sh: no CUDA device here" >&2; exit 2; }
python -c "import torch; print(torch.cuda.get_device_name(0))" > "$OUT/device.txt"
echo "device: $(cat "$OUT/device.txt")"

for net in vgg11 resnet18 transformer; do
    for precision in fp32 bf16; do
        echo "bench $net $precision"
        if ! timeout "$LIMIT" adatune bench --device cuda --network "$net" \
                --precision "$precision" --batch-size 128 --steps 20 --warmup 3 \
                --methods plain,hd,marthe,floor,floor-torch --json \
                > "$OUT/bench-$net-$precision.json" 2> "$OUT/bench-$net-$precision.log"; then
            echo "  failed (see $OUT/bench-$net-$precision.log)"; failed=1
        fi
    done
done

for net in vgg11 resnet18 transformer; do
    echo "bench $net cheaper steps"
    if ! timeout "$LIMIT" adatune bench --device cuda --network "$net" --batch-size 128 \
            --steps 20 --warmup 3 --methods plain,marthe --hvp exact --hyper-every 1,4 \
            --hvp-fraction 1,0.25 --no-memory --json \
            > "$OUT/cheaper-$net.json" 2> "$OUT/cheaper-$net.log"; then
        echo "  failed (see $OUT/cheaper-$net.log)"; failed=1
    fi
done

echo "train --tuner marthe on cuda"
if ! timeout 180 adatune train --tuner marthe --device cuda --epochs 5 \
        --store "$OUT/gpu.db" --checkpoint-dir "$OUT/gpu-runs" > "$OUT/train.log" 2>&1; then
    echo "  failed (see $OUT/train.log)"; failed=1
fi

python - "$OUT" <<'PY' > "$OUT/gpu.md" || failed=1
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
device = (out / "device.txt").read_text().strip()
print(f"`adatune bench` on {device} (batch 128, SGD, median of 20 steps; x plain step)\n")
print("| network | precision | plain ms | HD | MARTHE exact | MARTHE finite-diff. "
      "| floor (fused) | floor (torch) | MARTHE peak memory |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for f in sorted(out.glob("bench-*.json")):
    if f.stat().st_size == 0:
        continue
    d = json.loads(f.read_text())
    r = {x["method"]: x for x in d["results"]}
    def x(name):
        return f"{r[name]['ratio']:.2f}" if name in r else "-"
    mem = (f"{r['marthe']['peak_mb'] / r['plain']['peak_mb']:.2f}x"
           if r.get("marthe", {}).get("peak_mb") and r["plain"].get("peak_mb") else "-")
    print(f"| {d['network']} | {d['precision']} | {r['plain']['step_ms']:.1f} | {x('hd')} "
          f"| {x('marthe')} | {x('marthe[finite-difference]')} | {x('floor')} "
          f"| {x('floor-torch')} | {mem} |")
print("\nThe cheaper steps (fp32, x plain step):\n")
labels = ["marthe", "marthe[every 4]", "marthe[part 0.25]", "marthe[every 4, part 0.25]"]
print("| network | " + " | ".join(labels) + " |")
print("|---|" + "---:|" * len(labels))
for f in sorted(out.glob("cheaper-*.json")):
    if f.stat().st_size == 0:
        continue
    d = json.loads(f.read_text())
    r = {x["method"]: x for x in d["results"]}
    print(f"| {d['network']} | " + " | ".join(
        f"{r[name]['ratio']:.2f}" if name in r else "-" for name in labels) + " |")
PY
cat "$OUT/gpu.md"
tail -3 "$OUT/train.log"
exit $failed
