"""Builds sagan-attn through its CMakeLists.txt (the one build of record) and packages python/.

    pip install --no-build-isolation -e .    # builds against the torch already installed

--no-build-isolation matters: the extension must be built against the torch it will run with, and an
isolated build would fetch the registry's newest torch instead. Environment:
    MAX_JOBS               parallel compile jobs (default: all cores)
    SAGAN_ATTN_BUILD_DIR   CMake build folder (default: build/cmake); the GoogleTest binary lands there
    SAGAN_ATTN_BUILD_TESTS 0 to skip building the GoogleTest suite (default 1)
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
VERSION = (ROOT / "version.txt").read_text().strip()


class CMakeExtension(Extension):
    def __init__(self, name):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    def build_extension(self, ext):
        out_dir = Path(self.get_ext_fullpath(ext.name)).resolve().parent
        build_dir = Path(os.environ.get("SAGAN_ATTN_BUILD_DIR", ROOT / "build" / "cmake")).resolve()
        build_dir.mkdir(parents=True, exist_ok=True)
        tests = os.environ.get("SAGAN_ATTN_BUILD_TESTS", "1") != "0"
        cfg = [
            "cmake", "-S", str(ROOT), "-B", str(build_dir), "-G", "Ninja",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-DSAGAN_ATTN_PYTHON_OUTPUT_DIR={out_dir}",
            f"-DSAGAN_ATTN_BUILD_TESTS={'ON' if tests else 'OFF'}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        subprocess.run(cfg, check=True)
        jobs = os.environ.get("MAX_JOBS", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", str(build_dir), "--parallel", jobs], check=True)


setup(
    name="sagan-attn",
    version=VERSION,
    description="Fused, memory-frugal self-attention for GANs (SAGAN) as the torch op sagan::self_attn",
    package_dir={"": "python"},
    packages=find_packages("python"),
    ext_modules=[CMakeExtension("sagan_attn._C")],
    cmdclass={"build_ext": CMakeBuild},
    python_requires=">=3.9",
    install_requires=["torch>=2.11"],
    zip_safe=False,
)
