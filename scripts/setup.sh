#!/usr/bin/env bash
# One-command environment for sparse_perception_ros.
#
#   scripts/setup.sh            # or: make setup
#
# Creates .venv (Python 3.11) with ROS 2 Kilted from PyPI wheels (rclpy over FastDDS), the
# pinned ML stack (torch 2.13.0 CPU, ONNX Runtime, ...), nuscenes-devkit, pytest and ruff; builds
# our own vision_msgs / tf2_msgs interface packages into the venv where no system package exists;
# and installs this package in editable mode. Idempotent: a second run with nothing changed
# returns in about a second (it compares a hash of the inputs with a stamp in the venv).
#
# Environment: VENV (default ./.venv), PYTHON (default python3.11, then python3), FORCE=1 to redo.
# `scripts/setup.sh --check` only reports (exit 0: up to date, 1: a run would change something).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${VENV:-$ROOT/.venv}
STAMP=$VENV/.sparse_perception_setup
BUILD_DIR=$ROOT/_build_interfaces
INTERFACE_PKGS=(tf2_msgs vision_msgs)   # tf2_msgs first: no dependency between them, order is cosmetic

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------
# 0. Fast path: nothing changed since the last successful run.
inputs_hash() {
  (cd "$ROOT" && cat scripts/setup.sh requirements/*.txt setup.py setup.cfg package.xml \
      $(find interfaces -type f | sort) 2>/dev/null) | sha256sum | cut -d' ' -f1
}
HASH=$(inputs_hash)
if [[ "${1:-}" == "--check" ]]; then
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then say "environment up to date ($VENV)"; exit 0; fi
  say "environment is stale or missing: run scripts/setup.sh (or make setup)"; exit 1
fi
if [[ "${FORCE:-0}" != 1 && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -x "$VENV/bin/python" ]]; then
  if "$VENV/bin/python" -c 'import rclpy, torch, vision_msgs.msg, tf2_msgs.msg, sparse_perception_ros' 2>/dev/null; then
    say "environment up to date ($VENV)"
    exit 0
  fi
  say "stamp matches but imports fail; repairing"
fi

# ---------------------------------------------------------------------------------------------
# 1. System (apt-level) prerequisites, each with the package that provides it.
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if command -v python3.11 >/dev/null; then PY=python3.11; else PY=python3; fi
fi
command -v "$PY" >/dev/null || die "no Python found. Install Python 3.11: sudo apt-get install python3.11 python3.11-venv python3.11-dev"
PYVER=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[[ "$PYVER" == "3.11" ]] || die "Python 3.11 is required (the ROS 2 Kilted PyPI wheels are cp311); '$PY' is $PYVER. Install python3.11 or set PYTHON=/path/to/python3.11"
"$PY" -c 'import venv, ensurepip' 2>/dev/null || die "the venv module is missing. Install it: sudo apt-get install python3.11-venv"
PYINC_SYS=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
[[ -f "$PYINC_SYS/Python.h" ]] || die "Python headers are missing ($PYINC_SYS/Python.h). Install them: sudo apt-get install python3.11-dev"
command -v c++ >/dev/null || command -v g++ >/dev/null || die "no C++ compiler. Install it: sudo apt-get install g++"
command -v cc >/dev/null || command -v gcc >/dev/null || die "no C compiler. Install it: sudo apt-get install gcc"
command -v make >/dev/null || die "make is missing. Install it: sudo apt-get install make"

# ---------------------------------------------------------------------------------------------
# 2. The venv and the pinned Python packages.
if [[ ! -x "$VENV/bin/python" ]]; then
  say "creating $VENV"
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
export PIP_CONSTRAINT="$ROOT/requirements/constraints.txt"
say "installing pinned packages (ROS 2 Kilted wheels, torch CPU, ML stack, tools)"
"${PIP[@]}" install -q -r "$ROOT/requirements/ros.txt" -r "$ROOT/requirements/ml.txt" -r "$ROOT/requirements/dev.txt" \
  -r "$ROOT/requirements/tensorrt.txt"
"${PIP[@]}" install -q --no-deps -r "$ROOT/requirements/nuscenes.txt"

# cmake >= 3.22 is needed for the interface packages; take it from PyPI when the system's is missing or old.
cmake_ok() {
  command -v cmake >/dev/null && cmake --version | head -1 | awk '{split($3,v,"."); exit !(v[1]>3 || (v[1]==3 && v[2]>=22))}'
}
if ! cmake_ok; then
  say "system cmake missing or older than 3.22; installing cmake from PyPI into the venv"
  "${PIP[@]}" install -q "cmake>=3.22,<4"
  export PATH="$VENV/bin:$PATH"
fi

# ---------------------------------------------------------------------------------------------
# 3. Our interface packages, only where the system lacks them.
PYINC=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
NPINC=$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')
# The wheels' CMake exports name the wheel build host's Python include folder: point them at ours.
{ grep -rl /opt/python/cp311-cp311/ "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | xargs -r sed -i \
  -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g" \
  -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g"

for pkg in "${INTERFACE_PKGS[@]}"; do
  marker="$VENV/share/$pkg/.built_by_sparse_perception"
  src_hash=$(cd "$ROOT/interfaces/$pkg" && find . -type f | sort | xargs cat | sha256sum | cut -d' ' -f1)
  if [[ ! -f "$marker" ]] && "$VENV/bin/python" -c "import $pkg.msg" 2>/dev/null; then
    say "$pkg: provided by the system, not building ours"
    continue
  fi
  if [[ -f "$marker" && "$(cat "$marker")" == "$src_hash" ]] && "$VENV/bin/python" -c "import $pkg.msg" 2>/dev/null; then
    say "$pkg: already built"
    continue
  fi
  say "$pkg: building from interfaces/$pkg into the venv"
  rm -rf "${BUILD_DIR:?}/$pkg"; mkdir -p "$BUILD_DIR"
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  AMENT_PREFIX_PATH="$VENV" cmake -S "$ROOT/interfaces/$pkg" -B "$BUILD_DIR/$pkg" "${generator[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF > "$BUILD_DIR/$pkg.log" 2>&1 \
    || { tail -n 40 "$BUILD_DIR/$pkg.log" >&2; die "configuring $pkg failed (full log: $BUILD_DIR/$pkg.log)"; }
  AMENT_PREFIX_PATH="$VENV" cmake --build "$BUILD_DIR/$pkg" -j "$(nproc)" >> "$BUILD_DIR/$pkg.log" 2>&1 \
    || { tail -n 40 "$BUILD_DIR/$pkg.log" >&2; die "building $pkg failed (full log: $BUILD_DIR/$pkg.log)"; }
  cmake --install "$BUILD_DIR/$pkg" >> "$BUILD_DIR/$pkg.log" 2>&1 || die "installing $pkg failed (log: $BUILD_DIR/$pkg.log)"
  "$VENV/bin/python" -c "import $pkg.msg" || die "$pkg was built but does not import"
  echo "$src_hash" > "$marker"
done

# ---------------------------------------------------------------------------------------------
# 4. This package, editable, plus the ament index entries a ROS tool would look for.
say "installing sparse_perception_ros (editable)"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"
mkdir -p "$VENV/share/ament_index/resource_index/packages"
touch "$VENV/share/ament_index/resource_index/packages/sparse_perception_ros"

"$VENV/bin/python" -c 'import rclpy, torch, vision_msgs.msg, tf2_msgs.msg, sparse_perception_ros' \
  || die "final import check failed"
echo "$HASH" > "$STAMP"
say "done. Activate with: source $VENV/bin/activate   (or use make test / make demo)"
