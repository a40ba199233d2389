"""Builds sagan-attn through its CMakeLists.txt (the one build of record) and packages python/.
The package metadata (name, version, extras) is in pyproject.toml.

    pip install --no-build-isolation .       # into your environment, against the torch installed there
    pip install --no-build-isolation -e .    # the same, editable (development)
    pip wheel --no-build-isolation --no-deps .

--no-build-isolation matters: the extension must be built against the torch it will run with, and an
isolated build has no torch. The environment needs setuptools, wheel, cmake (>= 3.18), pybind11 and a
C++20 compiler; ninja is used when present. Environment:
    MAX_JOBS               parallel compile jobs (default: all cores)
    SAGAN_ATTN_BUILD_DIR   CMake build folder (default: build/cmake); the GoogleTest binary lands there
    SAGAN_ATTN_BUILD_TESTS AUTO (default: the GoogleTest suite when GoogleTest is found), ON (required),
                           OFF; 1 and 0 mean ON and OFF
    SAGAN_ATTN_CUDA        AUTO (CMake's default: CUDA kernels when the torch found has CUDA), ON, OFF
    CMAKE_ARGS             more CMake arguments, e.g. "-DCMAKE_DISABLE_FIND_PACKAGE_GTest=ON"
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent

# The op library, which _C links and which lies beside it in the package (CMakeLists.txt).
LIBRARY_FILE = "libsagan_attn.so"

_SWITCH = {"1": "ON", "0": "OFF", "on": "ON", "off": "OFF", "auto": "AUTO"}


def _switch(name, default):
    value = os.environ.get(name, default)
    if value.lower() not in _SWITCH:
        sys.exit(f"sagan-attn setup.py: {name} must be AUTO, ON, OFF, 1 or 0, got {value!r}")
    return _SWITCH[value.lower()]


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        try:
            import torch
        except ImportError:
            sys.exit("sagan-attn setup.py: torch is not importable by " + sys.executable + ": install "
                     "torch >= 2.11 first and build with `pip install --no-build-isolation .` (an isolated "
                     "build has no torch to build against)")
        # The build tools pip installed beside this python (cmake, ninja), also when the environment
        # is not activated (`.venv/bin/python -m pip install ...`).
        os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", "")
        if not shutil.which("cmake"):
            sys.exit("sagan-attn setup.py: no cmake on PATH: `pip install setuptools wheel cmake ninja pybind11` first")
        ext_path = Path(self.get_ext_fullpath(ext.name)).resolve()
        build_dir = Path(os.environ.get("SAGAN_ATTN_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        # CMake writes _C inside its own build folder and it is copied to where setuptools wants it
        # below: two build folders (the CPU build, cuda_build_check's) never share an output file, whose
        # timestamp would make one folder's ninja skip its link and ship the other folder's module.
        out_dir = build_dir / "python"
        build_dir.mkdir(parents=True, exist_ok=True)
        # A build folder configured for another python starts afresh: CMake caches the torch it found
        # there (Torch_DIR, its libraries), which would be linked instead of this python's torch.
        cache = build_dir / "CMakeCache.txt"
        if cache.exists():
            found = re.search(r"^Python_EXECUTABLE:\w+=(.*)$", cache.read_text(), re.M)
            if found and found.group(1) != sys.executable:
                print(f"sagan-attn: {build_dir} was configured for {found.group(1)}, not {sys.executable}: "
                      "configuring afresh", flush=True)
                cache.unlink()
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir),
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DSAGAN_ATTN_PYTHON_OUTPUT_DIR={out_dir}",
            f"-DSAGAN_ATTN_BUILD_TESTS={_switch('SAGAN_ATTN_BUILD_TESTS', 'AUTO')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if "SAGAN_ATTN_CUDA" in os.environ:
            cfg.append(f"-DSAGAN_ATTN_CUDA={_switch('SAGAN_ATTN_CUDA', 'AUTO')}")
        cfg += shlex.split(os.environ.get("CMAKE_ARGS", ""))
        # A build folder keeps the generator it was first configured with; a fresh one gets Ninja when
        # there is one (the `ninja` package puts it on PATH).
        if not cache.exists() and shutil.which("ninja"):
            cfg += ["-G", "Ninja"]
        print(f"sagan-attn: building against torch {torch.__version__} in {build_dir}", flush=True)
        subprocess.run(cfg, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)
        # _C and the op library it links (RPATH $ORIGIN), side by side in build_lib (the wheel,
        # `pip install .`); copy_extensions_to_source below takes both to python/sagan_attn (--inplace,
        # editable installs).
        ext_path.parent.mkdir(parents=True, exist_ok=True)
        for name in (ext_path.name, LIBRARY_FILE):
            shutil.copyfile(out_dir / name, ext_path.parent / name)
            shutil.copymode(out_dir / name, ext_path.parent / name)

    # setuptools knows of _C only; the op library beside it goes wherever _C goes.
    def copy_extensions_to_source(self):
        super().copy_extensions_to_source()
        for built, inplace in self.get_output_mapping().items():
            if Path(built).name == LIBRARY_FILE:
                self.copy_file(built, inplace, level=self.verbose)

    def get_outputs(self):
        outputs = super().get_outputs()
        return outputs + [_beside(o) for o in outputs if Path(o).name.startswith("_C.")]

    def get_output_mapping(self):
        mapping = super().get_output_mapping()  # built file -> its in-place copy
        mapping.update({_beside(b): _beside(i) for b, i in mapping.items() if Path(b).name.startswith("_C.")})
        return mapping


def _beside(path):
    return str(Path(path).parent / LIBRARY_FILE)


setup(
    ext_modules=[CMakeExtension("sagan_attn._C")],
    cmdclass={"build_ext": CMakeBuild},
)
