#!/usr/bin/env bash
# --device cuda against the CPU on the tiny models, prepared for the day a GPU is lent (under 5 minutes).
#
#   bash benchmarks/gpu_check.sh             # needs CUDA; stops at once with one line when there is none
#   bash benchmarks/gpu_check.sh --dry-run   # no GPU needed: the "cuda" runs run on the CPU too (checks the script)
#
# From examples/make_tiny_models.py's models (built in WORK, default a new temporary folder; PYTHON picks the
# interpreter) it runs and compares:
#   1. `mmmerge merge` of ties, linear and dare_ties (--seed 7), bfloat16 and float32, with --device cuda and on
#      the CPU: per merge, how many tensors are bit-identical and the largest absolute difference of the others;
#   2. one search candidate (`mmmerge search --trials 1`) on cuda and on the CPU: its parameters and dev score;
#   3. one eval batch (`mmmerge eval --limit 8 --batch-size 8`) on cuda and on the CPU: answers and metrics.
# Where the arithmetic cannot give the same bits: dare_ties draws its masks from torch's CUDA generator (Philox),
# not the CPU's (Mersenne Twister), so its tensors differ by design; sums and matrix products may round in
# another order on the GPU (float32 results within a few ulps, answers of a random tiny model may then flip).
set -euo pipefail

DEVICE=cuda
if [[ "${1:-}" == "--dry-run" ]]; then
  DEVICE=cpu
elif [[ $# -gt 0 ]]; then
  echo "usage: bash benchmarks/gpu_check.sh [--dry-run]" >&2
  exit 2
fi

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TQDM_DISABLE=1

if [[ $DEVICE == cuda ]] && ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine, or with --dry-run" >&2
  exit 1
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
[[ $DEVICE == cpu ]] && echo "dry run: the 'cuda' side runs on the CPU; every result below should be identical"

WORK=${WORK:-$(mktemp -d)}
mkdir -p "$WORK"
echo "work folder: $WORK"
mmmerge() { "$PYTHON" -m mmmerge "$@"; }
step() { echo; echo "== $*"; }
took() { echo "   $1: $(( $(date +%s) - $2 )) s"; }
on() { [[ $1 == gpu ]] && echo "$DEVICE" || echo cpu; }  # the device of a side: the "gpu" side is cpu in a dry run

step "tiny models"
"$PYTHON" "$REPO/examples/make_tiny_models.py" "$WORK/tiny" > /dev/null
cd "$WORK/tiny"

step "merges: $DEVICE against cpu (tensors bit-identical / all, largest |difference| of the others)"
for method in ties linear dare_ties; do
  for dtype in bfloat16 float32; do
    recipe="gpu-$method-$dtype.yml"
    {
      echo "merge_method: $method"
      echo "dtype: $dtype"
      [[ $method != linear ]] && echo "base_model: llava"
      echo "models:"
      echo "  - {model: llava-a, parameters: {weight: 0.6$([[ $method != linear ]] && echo ', density: 0.5')}}"
      echo "  - {model: llava-b, parameters: {weight: 0.4$([[ $method != linear ]] && echo ', density: 0.5')}}"
    } > "$recipe"
    for side in cpu gpu; do
      start=$(date +%s)
      mmmerge merge "$recipe" --out "merged-$side-$method-$dtype" --device "$(on "$side")" --seed 7 --force --quiet
      took "$method $dtype on $(on "$side")" "$start"
    done
    "$PYTHON" - "merged-cpu-$method-$dtype" "merged-gpu-$method-$dtype" "$method $dtype" <<'EOF'
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

def tensors(folder):
    out = {}
    for f in sorted(Path(folder).glob("*.safetensors")):
        out.update(load_file(f))
    return out

a, b, label = tensors(sys.argv[1]), tensors(sys.argv[2]), sys.argv[3]
assert a.keys() == b.keys(), f"{label}: different tensor names"
bits = lambda t: t.reshape(-1).view(torch.uint8)  # noqa: E731
same = [n for n in a if a[n].dtype == b[n].dtype and a[n].shape == b[n].shape and bits(a[n]).equal(bits(b[n]))]
diff = max(((a[n].double() - b[n].double()).abs().max().item(), n) for n in a if n not in same) if len(same) < len(a) else None
print(f"   {label:<20} {'bit-identical' if diff is None else 'DIFFERENT':<13} {len(same)}/{len(a)} tensors"
      + ("" if diff is None else f"; largest |difference| {diff[0]:.3g} in {diff[1]}"))
EOF
  done
done

step "one search candidate: $DEVICE against cpu"
for side in cpu gpu; do
  start=$(date +%s)
  mmmerge search search.yml --out "search-$side" --trials 1 --device "$(on "$side")" --force --quiet
  took "search on $(on "$side")" "$start"
done
"$PYTHON" - "search-cpu/result.json" "search-gpu/result.json" <<'EOF'
import json
import sys

a, b = (json.load(open(p)) for p in sys.argv[1:])
for key in ("best_params", "best_value", "dev_scores"):
    print(f"   {key:<12} {'same' if a[key] == b[key] else 'DIFFERENT'}: cpu {a[key]}  |  other {b[key]}")
EOF

step "one eval batch: $DEVICE against cpu"
for side in cpu gpu; do
  start=$(date +%s)
  mmmerge eval llava --task vqav2 --questions world/questions.json --annotations world/annotations.json \
    --images world/val --out "eval-$side" --batch-size 8 --limit 8 --device "$(on "$side")" --force --quiet
  took "eval on $(on "$side")" "$start"
done
"$PYTHON" - "eval-cpu" "eval-gpu" <<'EOF'
import json
import sys
from pathlib import Path

runs = [Path(p) for p in sys.argv[1:]]
answers = [[json.loads(line)["raw"] for line in (r / "samples.jsonl").read_text().splitlines()] for r in runs]
metrics = [json.loads((r / "metrics.json").read_text()) for r in runs]
same = sum(x == y for x, y in zip(*answers))
print(f"   generated answers: {same}/{len(answers[0])} the same; metrics {'the same' if metrics[0] == metrics[1] else 'DIFFERENT'}"
      f": cpu {metrics[0]['overall']}  |  other {metrics[1]['overall']}")
EOF
echo
echo "gpu_check: done ($WORK)"
