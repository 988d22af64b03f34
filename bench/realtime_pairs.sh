#!/usr/bin/env bash
# Alternated realtime acceptance runs (issue 21): this checkout against a baseline revision, so that a
# change is compared within the same minutes of a host whose speed drifts (bench/RESULTS.md).
#
#   bash bench/realtime_pairs.sh BASELINE_REV [PAIRS] [-- extra bench_node.py realtime arguments]
#
# e.g. `bash bench/realtime_pairs.sh HEAD~1 3` or `bash bench/realtime_pairs.sh HEAD 2 -- --preset tiny`.
# The baseline is checked out with `git worktree add` into a temporary folder; each run uses its own
# checkout's bench/bench_node.py and package, this checkout's .venv. Pair i runs baseline then this
# checkout for odd i, the other way round for even i. Logs and per-frame dumps go to
# runs/realtime_pairs/<time>/ (base_N.log, this_N.log, *.json); a table is printed at the end.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BASE_REV="${1:?usage: bench/realtime_pairs.sh BASELINE_REV [PAIRS] [-- args]}"
shift
PAIRS=3
if [[ $# -gt 0 && "$1" != "--" ]]; then PAIRS="$1"; shift; fi
[[ $# -gt 0 && "$1" == "--" ]] && shift
PY="$ROOT/.venv/bin/python"
OUT="$ROOT/runs/realtime_pairs/$(date +%Y%m%d-%H%M%S)"
BASE="$(mktemp -d)/baseline"
mkdir -p "$OUT"
git -C "$ROOT" worktree add --detach --quiet "$BASE" "$BASE_REV"
trap 'git -C "$ROOT" worktree remove --force "$BASE" >/dev/null 2>&1 || true' EXIT
export OMP_NUM_THREADS=1
run() {  # run NAME CHECKOUT
  (cd "$2" && PYTHONPATH="$2" "$PY" bench/bench_node.py realtime --dump "$OUT/$1.json" "${@:3}" >"$OUT/$1.log" 2>&1) \
    || echo "run $1 failed (see $OUT/$1.log)"
  echo "$1 done"
}
echo "baseline $BASE_REV ($(git -C "$BASE" rev-parse --short HEAD)) vs this checkout ($(git -C "$ROOT" rev-parse --short HEAD)), $PAIRS pairs -> $OUT"
for i in $(seq 1 "$PAIRS"); do
  if (( i % 2 )); then run "base_$i" "$BASE" "$@"; run "this_$i" "$ROOT" "$@"
  else run "this_$i" "$ROOT" "$@"; run "base_$i" "$BASE" "$@"; fi
done
logs=()
for i in $(seq 1 "$PAIRS"); do logs+=("$OUT/base_$i.log" "$OUT/this_$i.log"); done
"$PY" "$ROOT/bench/realtime_summary.py" "${logs[@]}"
