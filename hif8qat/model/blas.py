"""Deterministic NumPy matmuls: OpenBLAS limited to one thread while the model computes.

OpenBLAS's results depend on its thread count (measured: the step-1 loss of a bf16 run
changes in the 9th digit between OPENBLAS_NUM_THREADS=1 and 2, because the attention
and LM-head matmuls are split differently). The project promises results that never
depend on the thread count, and on a 2-core machine BLAS threads also fight the
OpenMP threads of the C kernels (one attention matmul took 0.39 s with 2 BLAS threads
beside them, 0.002 s with 1). So the model's high-precision matmuls run on one BLAS
thread; the linear layers' GEMMs (C, OpenMP) keep every core.

threadpoolctl is used when installed (a small, well-kept package; a dependency of
scikit-learn); without it NumPy's BLAS keeps its own thread count and the fp32 paths
are deterministic only for a fixed OPENBLAS_NUM_THREADS.
"""
from __future__ import annotations

import contextlib
import functools

_controller = None


def _get_controller():
    global _controller
    if _controller is None:
        try:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
        except Exception:  # noqa: BLE001 - missing package or an unusual BLAS: no limit
            _controller = False
    return _controller


def single_threaded_blas():
    """Context manager: NumPy's BLAS on one thread inside, restored afterwards."""
    c = _get_controller()
    if not c:
        return contextlib.nullcontext()
    return c.limit(limits=1, user_api="blas")


def deterministic_blas(method):
    """Decorator for model methods whose NumPy matmuls must not depend on thread counts."""
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        with single_threaded_blas():
            return method(*args, **kwargs)
    return wrapper
