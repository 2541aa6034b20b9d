"""Run independent pieces of NumPy work on a small thread pool, deterministically.

The model's NumPy work (attention per (batch, kv-head), row blocks of the element-wise
layers) splits into pieces that share nothing: each piece reads its own slices and
writes its own slice of a preallocated output. NumPy releases the GIL inside matmul
(OpenBLAS, held at one thread by blas.py) and inside ufunc loops, so two pieces really
run on two cores.

Determinism: the pieces are a fixed function of the shapes, never of the pool size, and
every piece runs the same code on one thread; which worker takes which piece (dynamic,
so a busy core does not hold the other up) cannot change a bit of the result.

The pool has ``hq.get_num_threads()`` workers (OMP_NUM_THREADS / hq.set_num_threads),
the same budget as the C kernels, which never run at the same time as a pool's pieces.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

_lock = threading.Lock()
_pool = None
_pool_size = 0


def _workers():
    try:
        from hif8qat.format import get_num_threads
        return max(1, int(get_num_threads()))
    except Exception:  # noqa: BLE001 - no C extension: one thread
        return 1


def _get_pool(n):
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != n:
            if _pool is not None:
                _pool.shutdown(wait=True)
            _pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="hif8qat-piece")
            _pool_size = n
        return _pool


MIN_PARALLEL_WORK = 1 << 20   # elements: below, handing pieces to threads costs more


def run_pieces(fn, n_pieces, work=None):
    """Call ``fn(i)`` for i in range(n_pieces), on up to get_num_threads() threads.

    ``fn`` must touch only piece i's slices of its outputs. Exceptions propagate (the
    first one raised, after every piece has finished). Runs inline on one thread when
    ``work`` (elements touched, if given) is below MIN_PARALLEL_WORK, or when called
    from a pool worker (no nested pools).
    """
    workers = min(_workers(), n_pieces)
    if work is not None and work < MIN_PARALLEL_WORK:
        workers = 1
    if workers <= 1 or threading.current_thread().name.startswith("hif8qat-piece"):
        for i in range(n_pieces):
            fn(i)
        return
    futures = [_get_pool(workers).submit(fn, i) for i in range(n_pieces)]
    error = None
    for f in futures:
        e = f.exception()
        if e is not None and error is None:
            error = e
    if error is not None:
        raise error


def row_blocks(n_rows, row_elems, min_elems=1 << 16):
    """[(start, stop)] row ranges of about 2**16 elements each (at least min_elems):
    the split depends only on the shape, so results never depend on the pool size."""
    target = min_elems
    rows = max(1, target // max(1, row_elems))
    return [(r, min(r + rows, n_rows)) for r in range(0, n_rows, rows)]
