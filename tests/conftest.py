"""Shared pytest configuration for the fused_norm test suite.

- ``DEVICES`` / ``device``: cpu always, cuda when ``torch.cuda.is_available()``; the CUDA
  parameter skips with a reason otherwise (the parameter still shows up in the report).
- ``TOL``: one tolerance table per dtype, forward and backward separately. Weight/bias
  gradients are sums over rows, so their absolute tolerance grows with sqrt(rows).
- ``seed``: every test starts from the same RNG state (autouse).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="CUDA is not available on this machine")

DEVICES = ["cpu", pytest.param("cuda", marks=requires_cuda, id="cuda")]


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: test takes more than a few seconds")


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


@pytest.fixture(autouse=True)
def seed():
    """Deterministic inputs in every test, independent of test order."""
    torch.manual_seed(0)
    if HAS_CUDA:
        torch.cuda.manual_seed_all(0)
    yield 0


@dataclass(frozen=True)
class Tol:
    atol: float
    rtol: float


# fwd: y (and mean / rstd); bwd: dx. Weight/bias gradients use the bwd entry with
# atol * sqrt(rows) (see ``tol``). Low-precision results are compared with torch evaluated in
# float64 on the upcast (exactly representable) inputs, rounded to the result dtype, so these
# budgets cover the final rounding plus fp32 accumulation error.
TOL = {
    torch.float32: {"fwd": Tol(atol=1e-5, rtol=1e-5), "bwd": Tol(atol=5e-5, rtol=2e-5)},
    torch.float16: {"fwd": Tol(atol=1e-3, rtol=1e-3), "bwd": Tol(atol=2e-3, rtol=2e-3)},
    torch.bfloat16: {"fwd": Tol(atol=1.6e-2, rtol=1.6e-2), "bwd": Tol(atol=2e-2, rtol=1.6e-2)},
    torch.float64: {"fwd": Tol(atol=1e-10, rtol=1e-10), "bwd": Tol(atol=1e-10, rtol=1e-10)},
}


def tol(dtype: torch.dtype, kind: str, rows: int = 1) -> Tol:
    """kind: 'fwd', 'bwd' (dx) or 'wgrad' (dweight/dbias, a sum over ``rows`` rows)."""
    if kind == "wgrad":
        base = TOL[dtype]["bwd"]
        return Tol(atol=base.atol * math.sqrt(max(rows, 1)), rtol=base.rtol)
    return TOL[dtype][kind]


def assert_close(actual, expected, dtype, kind, rows=1, msg=""):
    """Compare ``actual`` with ``expected`` (cast to actual's dtype/device) using the table.

    NaNs must be in the same places; dtypes must match exactly.
    """
    t = tol(dtype, kind, rows)
    assert actual.dtype == expected.dtype, f"{msg}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{msg}: shape {actual.shape} != {expected.shape}"
    torch.testing.assert_close(
        actual, expected, atol=t.atol, rtol=t.rtol, equal_nan=True,
        msg=lambda m: f"{msg} [{dtype}, {kind}, rows={rows}]\n{m}",
    )
