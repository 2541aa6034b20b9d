"""Shared timing helpers for the benchmark scripts (best of several repeats)."""
import os
import time


def best_time(fn, repeat=7, min_time=0.05):
    """Best wall time of one call of fn over `repeat` rounds (each round loops until
    min_time has passed, to beat timer noise on small inputs)."""
    fn()  # warm up: page faults, thread pool start
    best = float("inf")
    for _ in range(repeat):
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            n += 1
            dt = time.perf_counter() - t0
            if dt >= min_time:
                break
        best = min(best, dt / n)
    return best


def environment_line():
    keys = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "HIF8QAT_ISA")
    return ", ".join(f"{k}={os.environ.get(k, '(unset)')}" for k in keys)
