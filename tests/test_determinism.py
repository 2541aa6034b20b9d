"""Results never depend on the thread count: OpenMP (hq.set_num_threads / OMP_NUM_THREADS)
or NumPy's BLAS threads (OPENBLAS_NUM_THREADS), for every precision of the model."""
import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import hashlib, sys
import numpy as np
import hif8qat as hq
cfg = hq.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, attention_bias=True)
m = hq.LlamaModel.from_config(cfg, seed=0)
m.set_precision(sys.argv[1])
tok = np.random.default_rng(0).integers(0, 256, (3, int(sys.argv[2])))
logits, loss = m.forward(tok, tok)
digest = hashlib.sha256(logits.tobytes())
m.backward()
digest.update(m.grads_flat.tobytes())
print(digest.hexdigest())
"""


def _run(precision, omp, blas, T=80):
    env = {**os.environ, "OMP_NUM_THREADS": str(omp), "OPENBLAS_NUM_THREADS": str(blas)}
    r = subprocess.run([sys.executable, "-c", SCRIPT, precision, str(T)], env=env,
                       capture_output=True, text=True, check=True)
    return r.stdout.strip()


@pytest.mark.parametrize("precision", ["fp32", "bf16", "hif8"])
def test_forward_and_backward_bits_do_not_depend_on_threads(precision):
    pytest.importorskip("threadpoolctl")
    digests = {_run(precision, omp, blas) for omp, blas in [(1, 1), (2, 2), (1, 2), (2, 1)]}
    assert len(digests) == 1


def test_long_sequences_with_causal_blocks_and_thread_pool_do_not_depend_on_threads():
    """T = 400: attention's causal blocks (64 forward, 128 backward) and the thread pool's
    (b, head) pieces (above pieces.MIN_PARALLEL_WORK), with 1 or 2 workers."""
    pytest.importorskip("threadpoolctl")
    digests = {_run("bf16", omp, blas, T=400) for omp, blas in [(1, 1), (2, 2), (2, 1)]}
    assert len(digests) == 1
