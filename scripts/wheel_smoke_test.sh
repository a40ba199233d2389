#!/usr/bin/env bash
# The package as a researcher gets it: builds the wheel (`pip wheel --no-build-isolation --no-deps .`,
# with the project's environment, see scripts/setup.sh), installs it into a fresh virtual environment
# that holds only the same torch, and runs tests/smoke/smoke_test.py there (import, forward, backward,
# module; torch must be the one installed before). CI runs it after scripts/test.sh.
# The wheel build reuses the CMake build of scripts/setup.sh (SAGAN_ATTN_BUILD_DIR, default build/cmake):
# nothing is recompiled, only the Python module is linked again where the wheel wants it.
#   SAGAN_ATTN_SMOKE_VENV  the fresh environment (default build/venv-smoke; emptied first)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh
venv_require wheel_smoke_test.sh
export SAGAN_ATTN_BUILD_DIR="${SAGAN_ATTN_BUILD_DIR:-build/cmake}"
export SAGAN_ATTN_BUILD_TESTS=ON  # as setup.sh configured the build: no reconfiguring of the tests
WHEEL_DIR=build/wheel
SMOKE_VENV="${SAGAN_ATTN_SMOKE_VENV:-build/venv-smoke}"

echo "== wheel: pip wheel --no-build-isolation --no-deps . =="
rm -rf "$WHEEL_DIR"
"$PY" -m pip wheel -q --no-build-isolation --no-deps . -w "$WHEEL_DIR"
WHEEL="$(ls "$WHEEL_DIR"/sagan_attn-*.whl)"
echo "built $WHEEL"
# The wheel must not ask for torch: pip would be free to replace the one it was built against.
"$PY" - "$WHEEL" <<'PYEOF'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as whl:
    meta = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    requires = [l for l in whl.read(meta).decode().splitlines() if l.startswith("Requires-Dist:")]
    names = whl.namelist()
torch_reqs = [r for r in requires if r.split(":", 1)[1].split(";")[0].strip().lower().startswith("torch")
              and "extra ==" not in r]
assert not torch_reqs, f"the wheel must not require torch outside its extras, it does: {torch_reqs}"
assert any(n.startswith("sagan_attn/_C") and n.endswith(".so") for n in names), f"no sagan_attn/_C*.so in {names}"
# The op library that _C links (RPATH $ORIGIN) ships beside it: without it the import fails.
assert "sagan_attn/libsagan_attn.so" in names, f"no sagan_attn/libsagan_attn.so in {names}"
print(f"wheel: {len(names)} files, requires outside extras: "
      f"{[r for r in requires if 'extra ==' not in r] or 'nothing'}")
PYEOF

TORCH_SPEC="torch==$("$PY" -c 'import torch; print(torch.__version__)')"
echo "== fresh environment $SMOKE_VENV: $TORCH_SPEC, then the wheel =="
rm -rf "$SMOKE_VENV"
python3 -m venv "$SMOKE_VENV"
SMOKE_PY="$(cd "$SMOKE_VENV" && pwd)/bin/python"
"$SMOKE_PY" -m pip install -q "$TORCH_SPEC"
"$SMOKE_PY" -m pip install "$WHEEL" | grep -v "^\s*$"
"$SMOKE_PY" -m pip list 2>/dev/null | grep -i -E "^(torch|sagan)"

echo "== smoke test =="
"$SMOKE_PY" tests/smoke/smoke_test.py --torch-version "${TORCH_SPEC#torch==}"
