"""Seconds of one dense weight GEMM at the rates of an OP row (`estimate.step_cost.gemm_rates`), in numpy:
the same formula as the step-cost kernel's GEMM rows (`estimate.kernels._op_time`, tests/test_gemm_shapes.py
holds the two equal), for scripts that compare it with measured GEMM tables (scripts/check_gemm_shapes.py).
"""

from __future__ import annotations

import numpy as np


def gemm_time_s(rates: dict, m, k, n, w_bytes: float, act_bytes: float = 2.0) -> np.ndarray:
    """Seconds of y[m, n] = x[m, k] @ W[k, n] (arrays broadcast) at `rates` (peak_flops_per_s, efficiency,
    bytes_per_s, latency_s; k_overhead, 0 if absent)."""
    m, k, n = (np.asarray(v, dtype=float) for v in (m, k, n))
    byts = k * n * w_bytes + m * (k + n) * act_bytes     # weights once + in/out activations
    busy = 2.0 * m * (k + rates.get("k_overhead", 0.0)) * n   # tensor-core time: each tile's K plus its overhead
    peak = rates["peak_flops_per_s"] * rates["efficiency"]
    return np.maximum(busy / peak, byts / rates["bytes_per_s"]) + rates["latency_s"]
