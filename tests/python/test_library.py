"""One op library: libsagan_attn.so is the only binary with the sagan registrations; the Python module
_C links it (it lies beside _C, RPATH $ORIGIN). These tests load it both ways in one process, in both
orders, each in a fresh subprocess (loading cannot be undone): ``import sagan_attn`` and
``torch.ops.load_library`` of the package's file (the loader maps it once), of a copy of it elsewhere,
and of the C++ package's installed library (other files: the copy loaded second registers nothing, see
csrc/op_registration.h). The ops must keep running and give the results of this process."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sagan_attn

ROOT = Path(__file__).resolve().parents[2]

# y and the five gradients of sagan::self_attn in float64 and float32, and a fake-tensor call (the Meta
# kernel): the same function runs here and in every subprocess.
RESULTS = r"""
import torch

def results():
    torch.manual_seed(0)
    out = {}
    for dtype in (torch.float64, torch.float32):
        B, Cqk, Cv, Nq, Nk = 2, 3, 10, 97, 41
        ins = [torch.randn(B, Cqk, Nq), torch.randn(B, Cqk, Nk), torch.randn(B, Cv, Nk),
               torch.randn(B, Cv, Nq), torch.tensor(0.7)]
        ins = [t.to(dtype).requires_grad_() for t in ins]
        y = torch.ops.sagan.self_attn(*ins, 0.5)
        grads = torch.autograd.grad(y, ins, torch.randn_like(y))
        for name, t in zip(("y", "f", "g", "h", "x", "gamma"), (y, *grads)):
            out[f"{dtype}.{name}"] = t.detach()
        meta = torch.ops.sagan.self_attn(*[t.detach().to("meta") for t in ins], 0.5)
        assert meta.shape == y.shape and meta.device.type == "meta", meta
    return out
"""

# argv: the library file to load, the order, where to save the results.
SCRIPT = RESULTS + r"""
import sys
from pathlib import Path

lib, order, out = sys.argv[1:]
if order == "import_then_load":
    import sagan_attn
    first = results()
    torch.ops.load_library(lib)
else:
    torch.ops.load_library(lib)
    first = results()  # the ops, without the package
    import sagan_attn
second = results()
for key in first:
    assert torch.equal(first[key], second[key]), f"{key} changed when the second loading came"
torch.save(second, out)
print("library_path=" + str(Path(sagan_attn.library_path()).resolve()))
"""

ORDERS = ["import_then_load", "load_then_import"]

# What a clash or a second set of registrations would print (a TORCH_LIBRARY clash aborts outright).
CLASH_SIGNS = ("Overriding a previously registered kernel", "sagan-attn:", "TORCH_LIBRARY")

namespace = {}
exec(RESULTS, namespace)
results = namespace["results"]


def package_library() -> Path:
    return Path(sagan_attn.__file__).resolve().parent / "libsagan_attn.so"


def installed_library() -> Path:
    """The C++ package's library (scripts/test_cpp_package.sh installs it before pytest in
    scripts/test.sh), if there is one built against this torch."""
    prefix = Path(os.environ.get("SAGAN_ATTN_INSTALL_PREFIX", ROOT / "build" / "install"))
    lib, config = prefix / "lib" / "libsagan_attn.so", prefix / "lib" / "cmake" / "sagan_attn" / "sagan_attnConfig.cmake"
    if not lib.exists() or not config.exists():
        pytest.skip(f"no installed C++ package at {prefix} (scripts/test_cpp_package.sh installs it)")
    built = re.search(r'set\(sagan_attn_TORCH_VERSION "([^"]*)"\)', config.read_text())
    if not built or built.group(1) != torch.__version__.split("+")[0]:  # CMake's Torch_VERSION: no +cpu
        pytest.skip(f"the C++ package at {prefix} was built against torch {built and built.group(1)}, "
                    f"not this process's {torch.__version__}")
    return lib.resolve()


def run_both_ways(lib: Path, order: str, tmp_path: Path) -> Path:
    """Runs SCRIPT in a fresh python with the package this process imported; checks that it succeeded
    without a sign of a clash and gave this process's results; returns the op library it used."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(sagan_attn.__file__).resolve().parents[1]), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / "results.pt"
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(lib), order, str(out)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    for sign in CLASH_SIGNS:
        assert sign not in proc.stderr, f"the second loading of {lib} printed:\n{proc.stderr}"
    theirs, ours = torch.load(out), results()
    assert theirs.keys() == ours.keys()
    for key in ours:
        torch.testing.assert_close(theirs[key], ours[key], msg=lambda m: f"{key}: {m}")
    return Path(re.search(r"^library_path=(.*)$", proc.stdout, re.M).group(1))


def test_package_links_the_library_beside_C():
    lib = package_library()
    assert lib.is_file(), f"no op library beside _C in {lib.parent}"
    assert Path(sagan_attn.library_path()).resolve() == lib
    assert Path(sagan_attn._C.__file__).resolve().parent == lib.parent


@pytest.mark.parametrize("order", ORDERS)
def test_import_and_load_library_of_the_same_file(order, tmp_path):
    # The loader maps the file once, whichever way comes first.
    assert run_both_ways(package_library(), order, tmp_path) == package_library()


@pytest.mark.parametrize("order", ORDERS)
def test_import_and_load_library_of_another_file(order, tmp_path):
    # Another file of the same build (as a C++ extension shipping its own copy would have): mapped a
    # second time, it registers nothing.
    copy = tmp_path / "copy" / "libsagan_attn.so"
    copy.parent.mkdir()
    shutil.copy2(package_library(), copy)
    used = run_both_ways(copy, order, tmp_path)
    # Loaded first, the copy satisfies _C's need for libsagan_attn.so (by SONAME): one copy in all.
    assert used == (package_library() if order == "import_then_load" else copy.resolve())


@pytest.mark.parametrize("order", ORDERS)
def test_import_and_load_library_of_the_installed_cpp_package(order, tmp_path):
    lib = installed_library()
    used = run_both_ways(lib, order, tmp_path)
    assert used == (package_library() if order == "import_then_load" else lib)
