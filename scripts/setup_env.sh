#!/usr/bin/env bash
# One-command set-up from nothing: a virtual environment in .venv with torch/torchvision,
# Detectron2 (a Python-only wheel built from the registry's pb1-detectron2 sdist, or the one
# already installed), the rest of the stack, and yolact_d2 in editable mode with its C++/CUDA
# extension. Every step checks whether it is already done, so a second run is a quick no-op.
set -euo pipefail
shopt -s nullglob
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
VENV=${YOLACT_D2_VENV:-$ROOT/.venv}
PY=$VENV/bin/python
TORCH_SPEC=${YOLACT_D2_TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}
SDIST=$ROOT/.cache/sdist/pb1-detectron2-0.6.tar.gz
WHEELS=$ROOT/.cache/wheels
T_ALL=$SECONDS

step() {  # step NAME CHECK_CMD DO_CMD: run DO_CMD unless CHECK_CMD succeeds; print what and how long.
  local name=$1 check=$2 action=$3 t0=$SECONDS
  if eval "$check" >/dev/null 2>&1; then
    echo "[setup] $name: already done"
  else
    echo "[setup] $name ..."
    eval "$action" 2>&1 | grep -v -E "is ignored: it is neither|^WARNING: Location" || true
    if ! eval "$check" >/dev/null 2>&1; then
      echo "[setup] FAILED: $name (check: $check)" >&2
      exit 1
    fi
    echo "[setup] $name: done in $((SECONDS - t0)) s"
  fi
}

pip_q() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
# Cheap checks (no torch import): a no-op run must be quick.
has_modules() { "$PY" -c "import importlib.util as u, sys; sys.exit(not all(u.find_spec(m) for m in sys.argv[1:]))" "$@"; }
file_hash() { { cat "$@" 2>/dev/null || true; } | sha256sum | cut -d' ' -f1; }

REQ_HASH=$(file_hash requirements.txt)
EXT_HASH=$(file_hash setup.py yolact_d2/layers/csrc/*)

# torch's CUDA build alone unpacks to ~5.5 GB: say so up front instead of pip's ENOSPC half-way.
NEED_MB=${YOLACT_D2_NEED_MB:-7000}
if ! { [ -x "$PY" ] && has_modules torch torchvision; }; then
  mkdir -p "$(dirname "$VENV")"
  FREE_MB=$(df -Pm "$(dirname "$VENV")" | awk 'NR==2 {print $4}')
  if [ "${FREE_MB:-0}" -lt "$NEED_MB" ]; then
    echo "[setup] FAILED: only ${FREE_MB} MB free on the disk of $(dirname "$VENV"); the set-up needs about ${NEED_MB} MB (torch + torchvision CUDA build ~5.5 GB, Detectron2 and the rest ~1 GB). Free some space or point YOLACT_D2_VENV at a larger disk." >&2
    exit 1
  fi
fi
step "virtual environment ($VENV)" "[ -x '$PY' ]" "python3 -m venv '$VENV' && pip_q --upgrade pip"
step "torch + torchvision ($TORCH_SPEC)" "has_modules torch torchvision" "pip_q $TORCH_SPEC"
# An installed detectron2 (e.g. upstream main built from source) is kept and used; one of our
# wheels from an older build number is rebuilt.
D2_VERSION=$(sed -n 's/^VERSION = "\(.*\)"$/\1/p' scripts/build_detectron2_wheel.py)
d2_ok() {
  "$PY" - "$D2_VERSION" <<'PYEOF'
import importlib.metadata as md, importlib.util as u, sys
if not u.find_spec("detectron2"):
    sys.exit(1)
try:
    v = md.version("detectron2")
except md.PackageNotFoundError:  # a source checkout on sys.path: keep it
    sys.exit(0)
sys.exit(0 if "+nocsrc" not in v or v == sys.argv[1] else 1)
PYEOF
}
step "detectron2 (python-only v0.6 wheel from pb1-detectron2)" "d2_ok" \
  "'$PY' scripts/build_detectron2_wheel.py '$SDIST' '$WHEELS' && pip_q --force-reinstall --no-deps '$WHEELS'/detectron2-$D2_VERSION-py3-none-any.whl && pip_q '$WHEELS'/detectron2-$D2_VERSION-py3-none-any.whl"
step "dependencies (requirements.txt)" "grep -qx '$REQ_HASH' '$VENV/.yolact_d2_requirements'" \
  "pip_q -r requirements.txt && echo '$REQ_HASH' > '$VENV/.yolact_d2_requirements'"
# The extension compiles CUDA kernels whenever nvcc is present (no GPU needed to build). A toolkit
# whose CUDA major version differs from torch's, or a CUDA build that fails, gives CPU kernels:
# setup.py says why in its "[yolact_d2]" lines, shown here (pip -q would hide them); the whole
# build log is kept in $VENV/yolact_d2_build.log.
export MAX_JOBS=${MAX_JOBS:-2}
BUILD_LOG=$VENV/yolact_d2_build.log
install_yolact_d2() {
  local rc=0
  "$PY" -m pip install -v --disable-pip-version-check --no-build-isolation --no-deps -e . >"$BUILD_LOG" 2>&1 || rc=$?
  grep -o '\[yolact_d2\].*' "$BUILD_LOG" | awk '!seen[$0]++' || true
  if [ "$rc" -ne 0 ]; then
    tail -n 40 "$BUILD_LOG"
    echo "[setup] building yolact_d2 failed (exit $rc); full log: $BUILD_LOG" >&2
    return "$rc"
  fi
  echo "$EXT_HASH" > "$VENV/.yolact_d2_extension"
}
step "yolact_d2 (editable) + C++/CUDA extension" \
  "grep -qx '$EXT_HASH' '$VENV/.yolact_d2_extension' && ls yolact_d2/_C*.so && has_modules yolact_d2" \
  "install_yolact_d2"
"$PY" -W ignore::FutureWarning -c "
import detectron2, yolact_d2
from yolact_d2.layers import backend_info
kernels = sorted({k.split('-')[0] for ops in backend_info().values() for k in ops.values() if k.endswith('-kernel')})
print('[setup] detectron2', detectron2.__version__, '| yolact_d2', yolact_d2.__version__, '| compiled kernels:', '+'.join(kernels) or 'none (pure-PyTorch ops)')"
echo "[setup] finished in $((SECONDS - T_ALL)) s"
