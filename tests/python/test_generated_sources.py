"""The CUDA instantiation files, their declarations and the CMake source list are written by
kernels/cuda/generate_instantiations.py from one table: they must be what it writes today (a hand
edit, or a table change without a rerun, fails here, on machines without CUDA too)."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_cuda_instantiations_are_generated_from_the_table():
    out = subprocess.run([sys.executable, str(ROOT / "kernels/cuda/generate_instantiations.py"), "--check"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
