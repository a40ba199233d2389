# Sourced by the scripts (not run): the project's virtual environment, SAGAN_ATTN_VENV (default .venv in
# the repository), put first on PATH so that python, pip, cmake, ctest and ninja are the ones installed
# there, never the system's (which PEP 668 systems, Debian 12+ and Ubuntu 23.04+, keep away from pip).
# scripts/setup.sh creates and fills it; sets VENV (absolute) and PY (its python).
VENV="${SAGAN_ATTN_VENV:-.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
PY="$VENV/bin/python"
export VIRTUAL_ENV="$VENV"
export PATH="$VENV/bin:$PATH"
unset PYTHONHOME

# venv_require SCRIPT: stops SCRIPT with a clear message when the environment has not been set up.
venv_require() {
  if [ ! -x "$PY" ]; then
    echo "$1: no virtual environment at $VENV (SAGAN_ATTN_VENV): run bash scripts/setup.sh first" >&2
    exit 1
  fi
}
