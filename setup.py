"""Builds the one C extension, hif8qat._C, from csrc/.

Flags: C11, -O3, OpenMP. Never -ffast-math/-Ofast (see hif8-format.md): the codec's
rounding and the scaler's division must be IEEE-exact. ISA-specific kernels pick their
instruction set per file with `#pragma GCC target`, and cpu.c chooses among them at run
time, so the wheel runs on any x86-64.
HIF8QAT_SANITIZE=1 builds with AddressSanitizer/UBSan (used by .ci/run).
"""
import glob
import os
import sys

import numpy as np
from setuptools import Extension, setup

sources = sorted(glob.glob("csrc/*.c"))
extra_compile_args = ["-std=c11", "-O3", "-fopenmp", "-fno-strict-aliasing",
                      "-Wall", "-Wextra", "-Wno-unused-parameter",
                      "-Wno-missing-field-initializers", "-fvisibility=hidden"]
extra_link_args = ["-fopenmp"]
if os.environ.get("HIF8QAT_SANITIZE") == "1":
    extra_compile_args += ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-O1"]
    extra_link_args += ["-fsanitize=address,undefined"]
if sys.platform == "darwin":  # Apple clang needs libomp; keep the build possible without it
    extra_compile_args.remove("-fopenmp")
    extra_link_args.remove("-fopenmp")

setup(
    ext_modules=[
        Extension(
            "hif8qat._C",
            sources=sources,
            include_dirs=["csrc", np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=extra_compile_args,
            extra_link_args=extra_link_args,
        )
    ]
)
