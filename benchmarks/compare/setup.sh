#!/usr/bin/env bash
# Build the benchmark-only environment for benchmarks/compare/run.py: a SEPARATE venv holding the two anchors
# (pythae 0.1.2, diffusers 0.42.1) next to dgm (editable), under the same torch==2.13.0 pin as dgm's own .venv.
# dgm never depends on either anchor; nothing here touches dgm's .venv or pyproject dependencies.
#   bash benchmarks/compare/setup.sh            # -> benchmarks/compare/.venv-anchors
#   VENV=$HOME/anchors bash benchmarks/compare/setup.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VENV="${VENV:-$HERE/.venv-anchors}"
PY="${PY:-python3}"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" "torch==2.13.0"
"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" "pythae==0.1.2" "diffusers==0.42.1"
"$VENV/bin/pip" install -q -c "$ROOT/constraints.txt" -e "$ROOT"
"$VENV/bin/python" - <<'PY'
import torch, pythae, diffusers, dgm
print(f"ok: torch {torch.__version__}, pythae {getattr(pythae, '__version__', '0.1.2')}, "
      f"diffusers {diffusers.__version__}, dgm {dgm.__version__}")
PY
