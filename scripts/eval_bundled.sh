#!/usr/bin/env bash
# Score the bundled models on held-out synthetic scenes (seed 2; the models were trained on seed 1)
# through the ROS path (player -> perception node -> recorder -> nuscenes-devkit), plus the fused
# model with one modality removed. Writes reports under ${OUT:-reports/bundled}; models/README.md
# quotes their summary.md files. Usage: bash scripts/eval_bundled.sh   (about 10 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-reports/bundled}
DATA=${DATA:-data/heldout_s2}
CLI=("$PY" -m sparse_perception_ros.cli)
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
if [ ! -d "$DATA/root" ]; then
  "${CLI[@]}" synth --seed 2 --out "$DATA/root" --bag-out "$DATA/bags" --scenes 4 --keyframes 20 \
      --width 440 --height 248 --no-sweeps --objects 40
fi
common=(--dataroot "$DATA/root" --bag "$DATA"/bags/* --score-threshold 0.05 --rate 0.5 --no-plots --quiet --overwrite)
"${CLI[@]}" eval "${common[@]}" --preset tiny --out "$OUT/tiny_ros"
"${CLI[@]}" eval "${common[@]}" --preset tiny_fusion --out "$OUT/tiny_fusion_ros"
"${CLI[@]}" eval "${common[@]}" --preset tiny_fusion --sensors camera_only --out "$OUT/tiny_fusion_camera_only_ros"
"${CLI[@]}" eval "${common[@]}" --preset tiny_fusion --sensors lidar_only --out "$OUT/tiny_fusion_lidar_only_ros"
for r in tiny_ros tiny_fusion_ros tiny_fusion_camera_only_ros tiny_fusion_lidar_only_ros; do
  echo "== $r"; sed -n '1,40p' "$OUT/$r/summary.md" | grep -E "mAP|AMOTA|NDS" | head -6
done
