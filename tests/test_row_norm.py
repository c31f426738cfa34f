"""Row norms (LayerNorm, RMSNorm): parity with torch, modules, autograd, opcheck, compile,
autocast and bad input.

Every test that applies to both norms is parametrized over ``NORMS``; the oracle is
``torch.nn.functional`` (evaluated in float64 on the upcast inputs for numeric parity).
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import DEVICES, HAS_CUDA, assert_close, requires_cuda

# --------------------------------------------------------------------------------------------
# The two norms, described once
# --------------------------------------------------------------------------------------------

_DEFAULT = object()


@dataclass(frozen=True)
class Norm:
    name: str
    has_bias: bool
    default_eps: float | None
    affines: tuple  # which of weight / bias can be passed
    torch_module: type

    # Looked up lazily so that a missing attribute fails the tests that need it, not collection.
    def ours(self):
        return getattr(fused_norm, self.name)

    def ref(self):
        return getattr(F, self.name)

    def ours_module(self):
        return getattr(fused_norm, self.torch_module.__name__)

    def fwd_op(self):
        return getattr(torch.ops.fused_norm, f"{self.name}_fwd")

    def bwd_op(self):
        return getattr(torch.ops.fused_norm, f"{self.name}_bwd")

    def call(self, fn, x, ns, w=None, b=None, eps=_DEFAULT):
        """Call a functional with torch's signature for this norm."""
        eps = self.default_eps if eps is _DEFAULT else eps
        if self.has_bias:
            return fn(x, ns, w, b, eps)
        assert b is None
        return fn(x, ns, w, eps)

    def call_fwd_op(self, x, ns, w=None, b=None, eps=1e-5):
        if self.has_bias:
            return self.fwd_op()(x, ns, w, b, eps)
        assert b is None
        return self.fwd_op()(x, ns, w, eps)

    def resolved_eps(self, eps, dtype):
        """What eps=None means for this input dtype (torch.finfo of the opmath dtype)."""
        if eps is None:
            return torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
        return eps


LN = Norm("layer_norm", True, 1e-5, ("none", "weight", "bias", "weight_bias"), torch.nn.LayerNorm)
RMS = Norm("rms_norm", False, None, ("none", "weight"), torch.nn.RMSNorm)
NORMS = [pytest.param(LN, id="layer_norm"), pytest.param(RMS, id="rms_norm")]
NORM_AFFINES = [
    pytest.param(n, a, id=f"{n.name}-{a}") for n in (LN, RMS) for a in n.affines
]

DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
    pytest.param(torch.float64, id="fp64"),
]


def _numel(shape):
    return math.prod(shape)


def make_params(norm, affine, ns, dtype, device):
    """Random (not ones/zeros) affine parameters so that mistakes in the epilogue show."""
    w = torch.randn(ns, dtype=dtype, device=device) if affine in ("weight", "weight_bias") else None
    b = torch.randn(ns, dtype=dtype, device=device) if affine in ("bias", "weight_bias") else None
    return w, b


def fwd_bwd(norm, fn, x, ns, w, b, eps, dy):
    """y and the gradients of (x, w, b) (None where the input is None) for one functional."""
    leaves = [t.detach().requires_grad_() if t is not None else None for t in (x, w, b)]
    y = norm.call(fn, leaves[0], ns, leaves[1], leaves[2], eps=eps)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, dy))
    return y, [next(grads) if t is not None else None for t in leaves]


def oracle(norm, x, ns, w, b, eps, dy):
    """torch.nn.functional in float64 on the upcast inputs, rounded back to each dtype."""
    eps = norm.resolved_eps(eps, x.dtype)
    up = [t.double() if t is not None else None for t in (x, w, b)]
    y, grads = fwd_bwd(norm, norm.ref(), up[0], ns, up[1], up[2], eps, dy.double())
    y = y.to(x.dtype)
    grads = [g.to(t.dtype) if g is not None else None for g, t in zip(grads, (x, w, b))]
    return y, grads


def check_parity(norm, x, ns, w=None, b=None, eps=_DEFAULT, dy=None, tol_dtype=None):
    eps = norm.default_eps if eps is _DEFAULT else eps
    tol_dtype = tol_dtype or x.dtype
    if dy is None:
        dy = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    y, grads = fwd_bwd(norm, norm.ours(), x, ns, w, b, eps, dy)
    y_ref, grads_ref = oracle(norm, x, ns, w, b, eps, dy)
    rows = x.numel() // max(_numel(ns), 1)
    assert_close(y, y_ref, tol_dtype, "fwd", msg="y")
    assert_close(grads[0], grads_ref[0], tol_dtype, "bwd", msg="dx")
    for name, g, g_ref in (("dweight", grads[1], grads_ref[1]), ("dbias", grads[2], grads_ref[2])):
        if g_ref is not None:
            assert_close(g, g_ref, tol_dtype, "wgrad", rows=rows, msg=name)
    return y, grads


# --------------------------------------------------------------------------------------------
# Numeric parity with torch.nn.functional
# --------------------------------------------------------------------------------------------

SHAPES = [
    pytest.param((5, 1), (1,), id="N1"),
    pytest.param((7, 3), (3,), id="N3"),
    pytest.param((4, 17), (17,), id="N17"),
    pytest.param((3, 1000), (1000,), id="N1000"),
    pytest.param((3, 1023), (1023,), id="N1023"),
    pytest.param((4, 64), (64,), id="N64"),
    pytest.param((3, 256), (256,), id="N256"),
    pytest.param((9, 1024), (1024,), id="N1024"),  # 9 rows: groups cut short, chunks
    pytest.param((2, 4096), (4096,), id="N4096"),
    pytest.param((2, 8192), (8192,), id="N8192"),
    pytest.param((2, 65536), (65536,), id="N65536"),
    pytest.param((33,), (33,), id="1d"),
    pytest.param((2, 3, 17), (17,), id="3d"),
    pytest.param((2, 3, 4, 5), (5,), id="4d"),
    pytest.param((3, 4, 6), (4, 6), id="ns2d"),
    pytest.param((2, 2, 3, 5), (2, 3, 5), id="ns3d"),
    pytest.param((2, 3, 4, 5), (2, 3, 4, 5), id="ns_all"),
    pytest.param((300, 96), (96,), id="M300"),
]


@pytest.mark.parametrize("shape, ns", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm, affine", NORM_AFFINES)
def test_parity(norm, affine, dtype, shape, ns, device):
    x = torch.randn(shape, dtype=dtype, device=device)
    w, b = make_params(norm, affine, ns, dtype, device)
    y, grads = check_parity(norm, x, ns, w, b)
    assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm", NORMS)
def test_parity_row_of_1M(norm, dtype, device):
    n = 1 << 20
    x = torch.randn(1, n, dtype=dtype, device=device)
    w = torch.randn(n, dtype=dtype, device=device)
    b = torch.randn(n, dtype=dtype, device=device) if norm.has_bias else None
    check_parity(norm, x, (n,), w, b)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm", NORMS)
def test_mixed_dtype_fp32_weight(norm, dtype, device):
    """Low-precision input with fp32 weight/bias: output in the input dtype, like torch (where
    torch accepts the pair at all: torch 2.11's CUDA layer_norm rejects fp16 x with fp32 weight,
    which we accept)."""
    shape, ns = (6, 5, 96), (96,)
    x = torch.randn(shape, dtype=dtype, device=device)
    w = torch.randn(ns, device=device)
    b = torch.randn(ns, device=device) if norm.has_bias else None
    y, grads = check_parity(norm, x, ns, w, b, tol_dtype=dtype)
    assert y.dtype == dtype
    try:
        y_torch = norm.call(norm.ref(), x, ns, w, b)
    except RuntimeError as error:
        assert "expected scalar type" in str(error)
    else:
        assert y_torch.dtype == dtype
    assert grads[0].dtype == dtype
    assert grads[1].dtype == torch.float32
    if b is not None:
        assert grads[2].dtype == torch.float32


@pytest.mark.parametrize("x_dtype,w_dtype", [
    (torch.float32, torch.float64), (torch.float32, torch.bfloat16),
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float64),
    (torch.float64, torch.float32),
], ids=str)
def test_rms_norm_weight_of_another_dtype(x_dtype, w_dtype, device):
    """torch's rms_norm takes a weight of any floating dtype: the output and the input's
    gradient keep the input's dtype, the weight's gradient the weight's."""
    x = torch.randn(6, 40, dtype=x_dtype, device=device, requires_grad=True)
    w = torch.randn(40, dtype=w_dtype, device=device, requires_grad=True)
    dy = torch.randn(6, 40, dtype=x_dtype, device=device)
    results = []
    for rms_norm in (fused_norm.rms_norm, F.rms_norm):
        with warnings.catch_warnings():  # torch's own note that it takes its unfused path
            warnings.simplefilter("ignore")
            y = rms_norm(x, (40,), w)
        results.append((y, *torch.autograd.grad(y, (x, w), dy)))
    low = min((x_dtype, w_dtype), key=lambda dtype: torch.finfo(dtype).bits)
    for got, expected, kind, rows in zip(*results, ("fwd", "bwd", "wgrad"), (1, 1, 6)):
        assert_close(got, expected, low, kind, rows=rows, msg=kind)


@pytest.mark.parametrize("norm", [LN, RMS], ids=lambda norm: norm.name)
def test_output_memory_format_as_torch(norm, device):
    """torch's rms_norm keeps a channels_last (3d) input's memory format, its layer_norm gives
    contiguous output; both give contiguous output for other strided inputs."""
    inputs = [
        torch.randn(2, 3, 4, 5, device=device).contiguous(memory_format=torch.channels_last),
        torch.randn(2, 3, 4, 5, 6, device=device).contiguous(
            memory_format=torch.channels_last_3d),
        torch.randn(4, 5, 3, device=device).transpose(1, 2),
        torch.randn(2, 3, 4, 10, device=device)[..., ::2],
    ]
    for x in inputs:
        ns = (x.shape[-1],)
        y = norm.call(norm.ours(), x, ns, None, None)
        expected = norm.call(norm.ref(), x, ns, None, None)
        assert y.stride() == expected.stride()
        torch.testing.assert_close(y, expected)


def _noncontig_case(layout, M, N, dtype, device):
    """(x, w, dy) where the named tensor is a non-contiguous view; others contiguous."""
    def r(*s):
        return torch.randn(*s, dtype=dtype, device=device)

    x, w, dy = r(M, N), r(N), r(M, N)
    if layout == "x_transposed":
        x = r(N, M).t()
    elif layout == "x_row_stride":  # rows padded, first column at offset 1
        x = r(M, N + 3)[:, 1 : N + 1]
    elif layout == "x_col_stride":
        x = r(M, 2 * N)[:, ::2]
    elif layout == "x_expanded_rows":
        x = r(1, N).expand(M, N)
    elif layout == "x_permuted_3d":
        x = r(2, N, M // 2).permute(0, 2, 1)  # [2, M/2, N], last-dim stride M/2
        dy = r(2, M // 2, N)
    elif layout == "w_strided":
        w = r(2 * N)[::2]
    elif layout == "dy_transposed":
        dy = r(N, M).t()
    elif layout == "dy_expanded":  # what y.sum().backward() passes
        dy = torch.ones((), dtype=dtype, device=device).expand(M, N)
    else:
        raise AssertionError(layout)
    assert not (x.is_contiguous() and w.is_contiguous() and dy.is_contiguous())
    return x, w, dy


NONCONTIG = ["x_transposed", "x_row_stride", "x_col_stride", "x_expanded_rows", "x_permuted_3d",
             "w_strided", "dy_transposed", "dy_expanded"]


@pytest.mark.parametrize("layout", NONCONTIG)
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm", NORMS)
def test_non_contiguous(norm, dtype, layout, device):
    M, N = 12, 136
    x, w, dy = _noncontig_case(layout, M, N, dtype, device)
    b = torch.randn(N, dtype=dtype, device=device) if norm.has_bias else None
    check_parity(norm, x, (N,), w, b, dy=dy)


ZERO_SIZE = [
    pytest.param((0, 8), (8,), id="M0"),
    pytest.param((2, 0, 8), (8,), id="M0_3d"),
    pytest.param((4, 0), (0,), id="N0"),
    pytest.param((2, 3, 0), (3, 0), id="N0_ns2d"),
    pytest.param((0, 0), (0,), id="M0N0"),
]


@pytest.mark.parametrize("shape, ns", ZERO_SIZE)
@pytest.mark.parametrize("norm", NORMS)
def test_zero_size(norm, shape, ns, device):
    x = torch.randn(shape, device=device)
    w = torch.randn(ns, device=device)
    b = torch.randn(ns, device=device) if norm.has_bias else None
    dy = torch.randn(shape, device=device)
    y, grads = fwd_bwd(norm, norm.ours(), x, ns, w, b, norm.default_eps, dy)
    y_ref, grads_ref = fwd_bwd(norm, norm.ref(), x, ns, w, b, norm.default_eps, dy)
    assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
    for g, g_ref in zip(grads, grads_ref):
        if g_ref is None:
            continue
        assert g.shape == g_ref.shape and g.dtype == g_ref.dtype
        torch.testing.assert_close(g, g_ref)  # dweight/dbias are zeros when M == 0


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm", NORMS)
def test_nan_inf_propagation(norm, dtype, device):
    """Non-finite values poison exactly the rows (and weight-gradient entries) torch poisons."""
    M, N = 5, 40
    x = torch.randn(M, N, dtype=dtype, device=device)
    x[0, 3] = float("nan")
    x[1, 5] = float("inf")
    x[2, 0] = -float("inf")
    x[3, 7] = float("inf")
    x[3, 9] = -float("inf")  # row 4 stays finite
    w = torch.randn(N, dtype=dtype, device=device)
    b = torch.randn(N, dtype=dtype, device=device) if norm.has_bias else None
    dy = torch.randn(M, N, dtype=dtype, device=device)
    y, grads = fwd_bwd(norm, norm.ours(), x, (N,), w, b, norm.default_eps, dy)
    # NaN positions: torch in the same dtype on the same device is the reference (torch's
    # own fp32 CUDA and fp64 results can differ in how an inf row propagates).
    y_t, grads_t = fwd_bwd(norm, norm.ref(), x, (N,), w, b, norm.default_eps, dy)
    assert torch.equal(torch.isnan(y), torch.isnan(y_t)), "NaN positions of y differ from torch"
    for name, g, g_t in zip(("dx", "dweight", "dbias"), grads, grads_t):
        if g_t is not None:
            assert torch.equal(torch.isnan(g), torch.isnan(g_t)), f"NaN positions of {name} differ from torch"
    # The finite row is untouched by its neighbours.
    y_ref, grads_ref = oracle(norm, x, (N,), w, b, norm.default_eps, dy)
    assert_close(y[4], y_ref[4], dtype, "fwd", msg="y of the finite row")
    assert_close(grads[0][4], grads_ref[0][4], dtype, "bwd", msg="dx of the finite row")


@pytest.mark.parametrize("norm", NORMS)
def test_large_mean_offset_is_stable(norm, device):
    """x = 1000 + N(0,1) in fp32: E[x^2] - E[x]^2 would lose every digit of the variance.

    The tolerance is the fp32 rounding of x - mean at |x| ~ 1000 (ulp 6e-5), times rstd ~ 1.
    """
    N = 1024
    x = 1000.0 + torch.randn(8, N, device=device)
    y = norm.call(norm.ours(), x, (N,))
    y_ref = norm.call(norm.ref(), x.double(), (N,), eps=norm.resolved_eps(norm.default_eps, x.dtype))
    torch.testing.assert_close(y, y_ref.float(), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("eps", [0.0, 1e-2, 0.5, -1e-3])
@pytest.mark.parametrize("norm", NORMS)
def test_explicit_eps_values(norm, eps, device):
    """torch accepts any eps (zero and negative included); so must we, with the same result."""
    x = torch.randn(6, 50, dtype=torch.float64, device=device)
    w = torch.randn(50, dtype=torch.float64, device=device)
    check_parity(norm, x, (50,), w, eps=eps)


@pytest.mark.parametrize(
    "dtype, scale",
    [
        # mean(x^2) ~ scale^2 is well below finfo(float32).eps = 1.19e-7 (and far from
        # finfo(bf16/fp16).eps), so the choice of default eps decides the output.
        pytest.param(torch.float32, 1e-5, id="fp32"),
        pytest.param(torch.bfloat16, 1e-5, id="bf16"),
        pytest.param(torch.float16, 1e-4, id="fp16"),
        # fp64: default eps is finfo(float64).eps = 2.2e-16.
        pytest.param(torch.float64, 1e-9, id="fp64"),
    ],
)
def test_rms_norm_eps_none_is_opmath_finfo_eps(dtype, scale, device):
    x = (torch.randn(4, 64, dtype=torch.float64) * scale).to(dtype).to(device)
    y = fused_norm.rms_norm(x, (64,))
    y_torch = F.rms_norm(x, (64,))
    eps = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32).eps
    y_ref = F.rms_norm(x.double(), (64,), eps=eps).to(dtype)
    assert_close(y, y_ref, dtype, "fwd", msg="eps=None")
    assert_close(y, y_torch, dtype, "fwd", msg="eps=None vs torch in the same dtype")
    # ... and is different from using a much larger eps (so the test can tell them apart).
    assert not torch.allclose(y.double(), F.rms_norm(x.double(), (64,), eps=1e-5).to(dtype).double(), rtol=0.1)


# --------------------------------------------------------------------------------------------
# The raw ops
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("norm", NORMS)
def test_fwd_op_outputs(norm, dtype, device):
    """y contiguous in the input dtype; mean / rstd 1-D of M in fp32 (fp64 for fp64 input)."""
    shape, ns = (3, 4, 8, 5), (8, 5)  # fed transposed, so x is not contiguous
    base = torch.randn(3, 4, 5, 8, dtype=dtype, device=device)
    x = base.transpose(-1, -2)
    w = torch.randn(ns, dtype=dtype, device=device)
    b = torch.randn(ns, dtype=dtype, device=device) if norm.has_bias else None
    eps = 1e-5
    out = norm.call_fwd_op(x, list(ns), w, b, eps)
    stat_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    M = 12
    if norm.has_bias:
        y, mean, rstd = out
        _, mean_ref, rstd_ref = torch.native_layer_norm(x.to(stat_dtype), ns, None, None, eps)
        assert mean.shape == (M,) and mean.dtype == stat_dtype
        assert_close(mean, mean_ref.reshape(M), stat_dtype, "fwd", msg="mean")
    else:
        y, rstd = out
        rstd_ref = torch.rsqrt(x.to(stat_dtype).square().mean(dim=(-2, -1)) + eps)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert rstd.shape == (M,) and rstd.dtype == stat_dtype
    assert_close(rstd, rstd_ref.reshape(M), stat_dtype, "fwd", msg="rstd")
    y_ref = norm.call(norm.ref(), x.double(), ns, w.double(), b.double() if b is not None else None, eps).to(dtype)
    assert_close(y, y_ref, dtype, "fwd", msg="y")


@pytest.mark.parametrize("norm", NORMS)
def test_stats_are_not_differentiable(norm, device):
    x = torch.randn(4, 16, device=device, requires_grad=True)
    w = torch.randn(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True) if norm.has_bias else None
    y, *stats = norm.call_fwd_op(x, [16], w, b, 1e-5)
    assert y.requires_grad
    for s in stats:
        assert not s.requires_grad


def _mask_cases(norm):
    n = 3 if norm.has_bias else 2
    import itertools

    return [pytest.param(norm, list(m), id=f"{norm.name}-{''.join('1' if v else '0' for v in m)}")
            for m in itertools.product([True, False], repeat=n)]


@pytest.mark.parametrize("with_params", [True, False], ids=["params", "no_params"])
@pytest.mark.parametrize("norm, mask", _mask_cases(LN) + _mask_cases(RMS))
def test_bwd_op_output_mask(norm, mask, with_params, device):
    """Masked-off outputs, and dweight/dbias without weight/bias, are empty tensors of shape [0]."""
    M, N = 6, 24
    x = torch.randn(M, N, device=device)
    w = torch.randn(N, device=device) if with_params else None
    b = torch.randn(N, device=device) if (with_params and norm.has_bias) else None
    dy = torch.randn(M, N, device=device)
    _, (dx_ref, dw_ref, db_ref) = oracle(norm, x, (N,), w, b, 1e-5, dy)
    fwd = norm.call_fwd_op(x, [N], w, b, 1e-5)
    if norm.has_bias:
        _, mean, rstd = fwd
        out = norm.bwd_op()(dy, x, [N], mean, rstd, w, b, mask)
        refs = (dx_ref, dw_ref, db_ref)
        params = (x, w, b)
    else:
        _, rstd = fwd
        out = norm.bwd_op()(dy, x, [N], rstd, w, mask)
        refs = (dx_ref, dw_ref)
        params = (x, w)
    assert len(out) == len(mask)
    for i, (o, m, ref, p) in enumerate(zip(out, mask, refs, params)):
        if m and p is not None:
            assert o.shape == p.shape and o.dtype == p.dtype, f"output {i}"
            kind = "bwd" if i == 0 else "wgrad"
            assert_close(o, ref, torch.float32, kind, rows=M, msg=f"output {i}")
        else:
            assert o.shape == (0,), f"output {i} should be empty (mask={m}, param given={p is not None})"


@pytest.mark.parametrize("norm", NORMS)
def test_functional_dispatches_to_fused_op(norm, device):
    """fused_norm.<norm> must run our op (not silently fall back to torch's)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(4, 32, device=device, requires_grad=True)
    w = torch.randn(32, device=device, requires_grad=True)
    with Record():
        y = norm.call(norm.ours(), x, (32,), w)
        y.backward(torch.ones_like(y))
    assert any(f"fused_norm.{norm.name}_fwd" in s for s in seen), seen
    assert any(f"fused_norm.{norm.name}_bwd" in s for s in seen), seen


# --------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------

MODULE_KWARGS = {
    "layer_norm": [dict(), dict(eps=1e-3), dict(elementwise_affine=False), dict(bias=False),
                   dict(elementwise_affine=False, bias=False)],
    "rms_norm": [dict(), dict(eps=1e-3), dict(eps=None), dict(elementwise_affine=False)],
}
MODULE_CASES = [
    pytest.param(n, kw, id=f"{n.name}-{'-'.join(f'{k}={v}' for k, v in kw.items()) or 'defaults'}")
    for n in (LN, RMS) for kw in MODULE_KWARGS[n.name]
]


@pytest.mark.parametrize("ns", [8, [8], (2, 8), torch.Size([3, 4])], ids=["int", "list", "tuple", "Size"])
@pytest.mark.parametrize("norm, kwargs", MODULE_CASES)
def test_module_matches_torch_module_attributes(norm, kwargs, ns):
    ours = norm.ours_module()(ns, **kwargs)
    ref = norm.torch_module(ns, **kwargs)
    assert isinstance(ours, norm.torch_module)
    assert type(ours) is not norm.torch_module
    assert ours.normalized_shape == ref.normalized_shape
    assert ours.eps == ref.eps
    assert ours.elementwise_affine == ref.elementwise_affine
    assert repr(ours) == repr(ref)
    assert ours.extra_repr() == ref.extra_repr()
    assert list(ours.state_dict().keys()) == list(ref.state_dict().keys())
    p_ours, p_ref = dict(ours.named_parameters()), dict(ref.named_parameters())
    assert p_ours.keys() == p_ref.keys()
    for k in p_ref:
        assert p_ours[k].shape == p_ref[k].shape and p_ours[k].dtype == p_ref[k].dtype
        torch.testing.assert_close(p_ours[k], p_ref[k])  # same initialization (ones / zeros)
    for k in ("weight", "bias"):
        if hasattr(ref, k):
            assert (getattr(ours, k) is None) == (getattr(ref, k) is None), k


@pytest.mark.parametrize("norm", NORMS)
def test_module_constructor_defaults(norm):
    ours, ref = norm.ours_module()(16), norm.torch_module(16)
    assert ours.eps == ref.eps == norm.default_eps
    assert ours.elementwise_affine is True
    if norm.has_bias:
        assert ours.bias is not None
    import inspect

    sig_ours = inspect.signature(type(ours).__init__).parameters
    sig_ref = inspect.signature(norm.torch_module.__init__).parameters
    assert list(sig_ours) == list(sig_ref)
    for k in sig_ref:
        assert sig_ours[k].default == sig_ref[k].default, k


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm, kwargs", MODULE_CASES)
def test_module_state_dict_roundtrip_and_outputs(norm, kwargs, dtype, device):
    ns = (6, 20)
    ref = norm.torch_module(ns, **kwargs, device=device, dtype=dtype)
    with torch.no_grad():
        for p in ref.parameters():
            p.copy_(torch.randn_like(p))
    ours = norm.ours_module()(ns, **kwargs, device=device, dtype=dtype)
    for p in ours.parameters():
        assert p.device.type == device and p.dtype == dtype
    ours.load_state_dict(ref.state_dict())  # torch -> ours, strict
    back = norm.torch_module(ns, **kwargs, device=device, dtype=dtype)
    back.load_state_dict(ours.state_dict())  # ours -> torch, strict
    for (k1, v1), (k2, v2) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2)

    x = torch.randn(3, 5, *ns, dtype=dtype, device=device)
    xo = x.clone().requires_grad_()
    y = ours(xo)
    with torch.no_grad():
        y_mod = ref(x)
    assert y.dtype == y_mod.dtype
    assert_close(y, y_mod, dtype, "fwd", msg="module y vs torch module")
    dy = torch.randn_like(y)
    y.backward(dy)
    # Gradients: against the float64 oracle with the same parameters (torch's own bf16 CPU
    # weight gradients are less accurate than the fp32 accumulation required here).
    w = ref.weight.detach() if ref.weight is not None else None
    b = getattr(ref, "bias", None)
    b = b.detach() if b is not None else None
    _, (dx_ref, dw_ref, db_ref) = oracle(norm, x, ns, w, b, ref.eps, dy)
    assert_close(xo.grad, dx_ref, dtype, "bwd", msg="module dx")
    if w is not None:
        assert_close(ours.weight.grad, dw_ref, dtype, "wgrad", rows=15, msg="module dweight")
    if b is not None:
        assert_close(ours.bias.grad, db_ref, dtype, "wgrad", rows=15, msg="module dbias")


@pytest.mark.parametrize("norm", NORMS)
def test_module_uses_fused_op(norm):
    from torch.utils._python_dispatch import TorchDispatchMode

    seen = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    m = norm.ours_module()(32)
    with Record():
        m(torch.randn(2, 32))
    assert any(f"fused_norm.{norm.name}_fwd" in s for s in seen), seen


# --------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64)
# --------------------------------------------------------------------------------------------

GRAD_SHAPES = [pytest.param((3, 5), (5,), id="2d"), pytest.param((2, 3, 4), (3, 4), id="ns2d"),
               pytest.param((4, 1), (1,), id="N1")]


@pytest.mark.parametrize("shape, ns", GRAD_SHAPES)
@pytest.mark.parametrize("norm, affine", NORM_AFFINES)
def test_gradcheck_and_gradgradcheck(norm, affine, shape, ns, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    w, b = make_params(norm, affine, ns, torch.float64, device)
    params = [t.requires_grad_() for t in (w, b) if t is not None]

    def fn(x, *p):
        it = iter(p)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return norm.call(norm.ours(), x, ns, ww, bb, eps=1e-5)

    assert torch.autograd.gradcheck(fn, (x, *params))
    assert torch.autograd.gradgradcheck(fn, (x, *params))


# --------------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------------


def _opcheck_cases():
    cases = []
    for norm in (LN, RMS):
        for affine in norm.affines:
            for dtype in (torch.float32, torch.bfloat16):
                cases.append(pytest.param(norm, affine, dtype, id=f"{norm.name}-{affine}-{str(dtype)[6:]}"))
    return cases


@pytest.mark.parametrize("norm, affine, dtype", _opcheck_cases())
def test_opcheck(norm, affine, dtype, device):
    shape, ns = (3, 4, 24), [24]
    x = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    w, b = make_params(norm, affine, tuple(ns), dtype, device)
    w = w.requires_grad_() if w is not None else None
    b = b.requires_grad_() if b is not None else None
    if norm.has_bias:
        fwd_args = (x, ns, w, b, 1e-5)
    else:
        fwd_args = (x, ns, w, 1e-5)
    torch.library.opcheck(norm.fwd_op().default, fwd_args)

    with torch.no_grad():
        stats = norm.fwd_op()(*fwd_args)[1:]
    dy = torch.randn(shape, dtype=dtype, device=device, requires_grad=True)
    x2 = x.detach().requires_grad_()
    if norm.has_bias:
        mean, rstd = stats
        for mask in ([True, True, True], [True, False, False]):
            torch.library.opcheck(norm.bwd_op().default, (dy, x2, ns, mean, rstd, w, b, mask))
    else:
        (rstd,) = stats
        for mask in ([True, True], [True, False]):
            torch.library.opcheck(norm.bwd_op().default, (dy, x2, ns, rstd, w, mask))


# --------------------------------------------------------------------------------------------
# torch.compile
# --------------------------------------------------------------------------------------------


def _recording_backend(graphs):
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return compile_fx(gm, example_inputs)

    return backend


@pytest.mark.parametrize("norm", NORMS)
def test_compile_module_fullgraph(norm, device):
    torch._dynamo.reset()
    N = 64
    m = norm.ours_module()(N, device=device)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    graphs = []
    cm = torch.compile(m, fullgraph=True, dynamic=False, backend=_recording_backend(graphs))
    x = torch.randn(4, 7, N, device=device)
    dy = torch.randn(4, 7, N, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_eager = m(xe)
    y_eager.backward(dy)
    g_eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y_comp = cm(xc)
    y_comp.backward(dy)
    assert any(f"fused_norm.{norm.name}_fwd" in g for g in graphs), graphs
    assert_close(y_comp, y_eager, torch.float32, "fwd", msg="compiled y")
    assert_close(xc.grad, xe.grad, torch.float32, "bwd", msg="compiled dx")
    for p, g in zip(m.parameters(), g_eager):
        assert_close(p.grad, g, torch.float32, "wgrad", rows=28, msg="compiled dparam")
    torch._dynamo.reset()


def test_compile_dynamic_shapes(device):
    """One compiled graph (dynamic=True) serves several row counts, forward and backward: the
    ops' fake kernels and autograd take symbolic sizes."""
    torch._dynamo.reset()
    N = 64
    ln = fused_norm.LayerNorm(N, device=device)
    rms = fused_norm.RMSNorm(N, device=device)
    with torch.no_grad():
        for p in (*ln.parameters(), *rms.parameters()):
            p.copy_(torch.randn_like(p))
    graphs = []
    f = torch.compile(lambda x: rms(ln(x)), fullgraph=True, dynamic=True,
                      backend=_recording_backend(graphs))
    compiled_after_first = None
    for M in (3, 7, 11):
        x = torch.randn(M, N, device=device)
        dy = torch.randn(M, N, device=device)
        xc, xe = x.clone().requires_grad_(), x.clone().requires_grad_()
        f(xc).backward(dy)
        rms(ln(xe)).backward(dy)
        assert_close(xc.grad, xe.grad, torch.float32, "bwd", msg=f"compiled dx, M={M}")
        compiled_after_first = compiled_after_first or len(graphs)
    assert any("fused_norm.rms_norm_fwd" in g for g in graphs), graphs
    assert len(graphs) == compiled_after_first, "recompiled for a new row count"
    torch._dynamo.reset()


def test_compile_functional_fullgraph(device):
    torch._dynamo.reset()
    N = 48

    def f(x, w, b):
        h = fused_norm.layer_norm(x, (N,), w, b, 1e-5)
        return fused_norm.rms_norm(h * 2.0, (N,), w) + fused_norm.layer_norm(x, (N,))

    graphs = []
    cf = torch.compile(f, fullgraph=True, dynamic=False, backend=_recording_backend(graphs))
    args = [torch.randn(5, N, device=device), torch.randn(N, device=device), torch.randn(N, device=device)]
    ea = [a.clone().requires_grad_() for a in args]
    ca = [a.clone().requires_grad_() for a in args]
    dy = torch.randn(5, N, device=device)
    ye = f(*ea)
    ye.backward(dy)
    yc = cf(*ca)
    yc.backward(dy)
    assert any("fused_norm.layer_norm_fwd" in g and "fused_norm.rms_norm_fwd" in g for g in graphs), graphs
    assert_close(yc, ye, torch.float32, "fwd", msg="compiled y")
    for i, (a, b) in enumerate(zip(ca, ea)):
        assert_close(a.grad, b.grad, torch.float32, "wgrad", rows=5, msg=f"compiled grad {i}")
    torch._dynamo.reset()


# --------------------------------------------------------------------------------------------
# autocast
# --------------------------------------------------------------------------------------------


def _autocast_cases(device_type):
    return [
        pytest.param(norm, ac, xd, id=f"{norm.name}-autocast_{str(ac)[6:]}-x_{str(xd)[6:]}")
        for norm in (LN, RMS)
        for ac in (torch.bfloat16, torch.float16)
        for xd in (torch.float32, ac)
    ]


def _check_autocast(norm, device_type, autocast_dtype, x_dtype):
    N = 32
    x = torch.randn(4, N, device=device_type).to(x_dtype)
    w = torch.randn(N, device=device_type)
    b = torch.randn(N, device=device_type) if norm.has_bias else None
    with torch.autocast(device_type, dtype=autocast_dtype):
        y_ref = norm.call(norm.ref(), x, (N,), w, b)
        y = norm.call(norm.ours(), x, (N,), w, b)
        xo = x.clone().requires_grad_()
        y2 = norm.call(norm.ours(), xo, (N,), w, b)
    assert y.dtype == y_ref.dtype, f"autocast output dtype {y.dtype}, torch gives {y_ref.dtype}"
    y2.float().sum().backward()
    assert xo.grad.dtype == x.dtype
    assert_close(y, y_ref, y_ref.dtype if y_ref.dtype != torch.float32 else torch.bfloat16, "fwd",
                 msg="autocast y")


@pytest.mark.parametrize("norm, autocast_dtype, x_dtype", _autocast_cases("cpu"))
def test_autocast_cpu(norm, autocast_dtype, x_dtype):
    _check_autocast(norm, "cpu", autocast_dtype, x_dtype)


@requires_cuda
@pytest.mark.parametrize("norm, autocast_dtype, x_dtype", _autocast_cases("cuda"))
def test_autocast_cuda(norm, autocast_dtype, x_dtype):
    _check_autocast(norm, "cuda", autocast_dtype, x_dtype)


# --------------------------------------------------------------------------------------------
# Bad input: same exception type as torch, message naming the problem (torch's wording)
# --------------------------------------------------------------------------------------------


# builder(device) -> (x, normalized_shape, weight, bias); regex keyed by norm name.
BAD_INPUTS = {
    "wrong_rank": (
        lambda d: (torch.randn(8, device=d), [4, 8], None, None),
        {"layer_norm": r"normalized_shape=\[4, 8\].*input of size\s*\[8\]",
         "rms_norm": r"at least 2 dimensions, but got 1"},
    ),
    "normalized_shape_mismatch": (
        lambda d: (torch.randn(4, 8, device=d), [7], None, None),
        {"*": r"normalized_shape=\[7\], expected input with shape \[\*,? ?7\].*input of size\s*\[4, 8\]"},
    ),
    "normalized_shape_mismatch_inner": (
        lambda d: (torch.randn(3, 8, device=d), [4, 8], None, None),
        {"*": r"normalized_shape=\[4, 8\].*input of size\s*\[3, 8\]"},
    ),
    "negative_normalized_shape": (
        lambda d: (torch.randn(4, 8, device=d), [-8], None, None),
        {"*": r"normalized_shape=\[-8\]"},
    ),
    "weight_wrong_shape": (
        lambda d: (torch.randn(4, 8, device=d), [8], torch.randn(7, device=d), None),
        {"*": r"Expected weight to be of same shape as normalized_shape.*weight of shape \[7\]"},
    ),
    "weight_wrong_rank": (
        lambda d: (torch.randn(4, 8, device=d), [8], torch.randn(1, 8, device=d), None),
        {"*": r"Expected weight to be of same shape as normalized_shape.*weight of shape \[1, 8\]"},
    ),
    "bias_wrong_shape": (
        lambda d: (torch.randn(4, 8, device=d), [8], torch.randn(8, device=d), torch.randn(7, device=d)),
        {"layer_norm": r"Expected bias to be of same shape as normalized_shape.*bias of shape \[7\]"},
    ),
    "bias_wrong_shape_no_weight": (
        lambda d: (torch.randn(4, 8, device=d), [8], None, torch.randn(2, 4, device=d)),
        {"layer_norm": r"Expected bias to be of same shape as normalized_shape.*bias of shape \[2, 4\]"},
    ),
    "int_input": (
        lambda d: (torch.ones(4, 8, dtype=torch.int32, device=d), [8], None, None),
        {"*": r"not implemented for 'Int'"},
    ),
    "long_input": (
        lambda d: (torch.ones(4, 8, dtype=torch.int64, device=d), [8], None, None),
        {"*": r"not implemented for 'Long'"},
    ),
    "bool_input": (
        lambda d: (torch.ones(4, 8, dtype=torch.bool, device=d), [8], None, None),
        {"*": r"not implemented for 'Bool'"},
    ),
    "empty_normalized_shape": (
        lambda d: (torch.randn(4, 8, device=d), [], None, None),
        {"*": r"Expected normalized_shape to be at least 1-dimensional"},
    ),
    "scalar_input": (
        lambda d: (torch.tensor(1.0, device=d), [], None, None),
        {"*": r"Expected normalized_shape to be at least 1-dimensional"},
    ),
}

BAD_CASES = [
    pytest.param(norm, case, entry, id=f"{norm.name}-{case}-{entry}")
    for case, (_, regexes) in BAD_INPUTS.items()
    for norm in (LN, RMS)
    if norm.name in regexes or "*" in regexes
    for entry in ("functional", "op")
]


def _ours_entry(norm, entry):
    if entry == "functional":
        return lambda x, ns, w, b: norm.call(norm.ours(), x, ns, w, b)
    return lambda x, ns, w, b: norm.call_fwd_op(x, ns, w, b, 1e-5)


def _assert_same_error(torch_fn, ours_fn, regex):
    with pytest.raises(Exception) as theirs:
        torch_fn()
    assert re.search(regex, str(theirs.value)), f"regex {regex!r} does not match torch: {theirs.value}"
    with pytest.raises(Exception) as ours:
        ours_fn()
    assert type(ours.value) is type(theirs.value), (
        f"ours raised {type(ours.value).__name__}: {ours.value}; "
        f"torch raises {type(theirs.value).__name__}: {theirs.value}")
    assert re.search(regex, str(ours.value)), f"message {str(ours.value)!r} does not match {regex!r}"


@pytest.mark.parametrize("dtype", [torch.complex64, torch.complex128])
def test_complex_input_as_torch(dtype):
    """torch's composite rms_norm takes complex input (its layer_norm refuses it, as ours)."""
    x = torch.randn(3, 8, dtype=dtype)
    w = torch.randn(8, dtype=dtype)
    torch.testing.assert_close(fused_norm.rms_norm(x, (8,), w), F.rms_norm(x, (8,), w))
    with pytest.raises(NotImplementedError, match="not implemented for 'Complex"):
        fused_norm.layer_norm(x, (8,))


@pytest.mark.parametrize("norm, case, entry", BAD_CASES)
def test_bad_input(norm, case, entry, device):
    builder, regexes = BAD_INPUTS[case]
    regex = regexes.get(norm.name, regexes.get("*"))
    x, ns, w, b = builder(device)
    _assert_same_error(lambda: norm.call(norm.ref(), x, ns, w, b),
                       lambda: _ours_entry(norm, entry)(x, ns, w, b), regex)


@pytest.mark.parametrize("norm", [LN, RMS], ids=lambda norm: norm.name)
def test_int_normalized_shape(norm, device):
    # The functions take a sequence only (their modules take an int too).
    x = torch.randn(4, 8, device=device)
    _assert_same_error(lambda: norm.call(norm.ref(), x, 8, None, None),
                       lambda: norm.call(norm.ours(), x, 8, None, None),
                       r"argument 'normalized_shape' \(position 2\) must be tuple of ints, not int")
    torch.testing.assert_close(norm.call(norm.ours(), x, torch.Size([8]), None, None),
                               norm.call(norm.ref(), x, [8], None, None))


DEVICE_MISMATCH_CASES = [
    pytest.param(norm, entry, which, id=f"{norm.name}-{which}-{entry}")
    for norm in (LN, RMS)
    for which in (("weight_cpu", "bias_cpu", "input_cpu") if norm.has_bias else ("weight_cpu", "input_cpu"))
    for entry in ("functional", "op")
]


@requires_cuda
@pytest.mark.parametrize("norm, entry, which", DEVICE_MISMATCH_CASES)
def test_bad_input_mismatched_devices(norm, entry, which):
    dev = {"x": "cuda", "w": "cuda", "b": "cuda"}
    dev[{"weight_cpu": "w", "bias_cpu": "b", "input_cpu": "x"}[which]] = "cpu"
    x = torch.randn(4, 8, device=dev["x"])
    w = torch.randn(8, device=dev["w"])
    b = torch.randn(8, device=dev["b"]) if norm.has_bias else None
    _assert_same_error(lambda: norm.call(norm.ref(), x, [8], w, b),
                       lambda: _ours_entry(norm, entry)(x, [8], w, b), r"device")
    torch.cuda.synchronize()  # the failed call left no asynchronous error behind


# --------------------------------------------------------------------------------------------
# Alignment, size, determinism (the CUDA paths these guard are vectorized / multi-block)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("what", ["x", "weight", "dy", "all"])
@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16"),
                                   pytest.param(torch.float16, id="fp16")])
@pytest.mark.parametrize("norm", NORMS)
def test_misaligned_pointers(norm, dtype, what, device):
    """Views starting at element offset 1 must not be read with 16-byte vector loads."""
    M, N = 8, 1024

    def shifted(*shape):
        return torch.randn(_numel(shape) + 1, dtype=dtype, device=device)[1:].view(shape)

    def plain(*shape):
        return torch.randn(shape, dtype=dtype, device=device)

    mk = {k: (shifted if what in (k, "all") else plain) for k in ("x", "weight", "dy")}
    x, w, dy = mk["x"](M, N), mk["weight"](N), mk["dy"](M, N)
    b = mk["weight"](N) if norm.has_bias else None
    assert x.is_contiguous() and (what not in ("x", "all") or x.storage_offset() == 1)
    check_parity(norm, x, (N,), w, b, dy=dy)


@requires_cuda
@pytest.mark.parametrize("shape", [pytest.param((1 << 16, 128), id="65536x128"),
                                   pytest.param((1 << 13, 4096), id="8192x4096"),
                                   pytest.param((3, 1 << 20), id="3x1M")])
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_many_rows_and_long_rows(norm, shape):
    M, N = shape
    x = torch.randn(M, N, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(N, dtype=torch.bfloat16, device="cuda") if norm.has_bias else None
    check_parity(norm, x, (N,), w, b)


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"), pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("norm", NORMS)
def test_weight_grad_deterministic(norm, dtype, device):
    """Two identical backward runs give bitwise-identical dweight (and dbias, dx)."""
    M, N = (4096, 1024) if device == "cuda" else (512, 256)
    x = torch.randn(M, N, dtype=dtype, device=device)
    w = torch.randn(N, dtype=dtype, device=device)
    b = torch.randn(N, dtype=dtype, device=device) if norm.has_bias else None
    dy = torch.randn(M, N, dtype=dtype, device=device)
    _, g1 = fwd_bwd(norm, norm.ours(), x, (N,), w, b, norm.default_eps, dy)
    _, g2 = fwd_bwd(norm, norm.ours(), x, (N,), w, b, norm.default_eps, dy)
    for name, a, c in zip(("dx", "dweight", "dbias"), g1, g2):
        if a is not None:
            assert torch.equal(a, c), f"{name} differs between two identical runs"


@requires_cuda
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_64bit_indexing(norm):
    """More than 2^31 elements in total (rows at offsets past int32): the last rows must be
    normalized as correctly as the first, forward and backward (needs ~13 GB of GPU memory)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with at least 24 GB for three 4.3 GB tensors")
    N = 4096
    M = (1 << 31) // N + 5
    x = torch.randn(M, N, dtype=torch.bfloat16, device="cuda")
    w = torch.randn(N, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(N, dtype=torch.bfloat16, device="cuda") if norm.has_bias else None
    params = (w, b) if norm.has_bias else (w,)
    mask = [True, False, False] if norm.has_bias else [True, False]
    rows = torch.tensor([0, M // 2, M - 2, M - 1], device="cuda")
    dy_rows = torch.randn(len(rows), N, dtype=x.dtype, device="cuda")
    y_ref, grads_ref = oracle(norm, x[rows], (N,), w, b, 1e-5, dy_rows)

    y, *stats = norm.fwd_op()(x, (N,), *params, 1e-5)
    assert_close(y[rows], y_ref, torch.bfloat16, "fwd", msg="y")
    del y
    dy = torch.zeros_like(x)
    dy[rows] = dy_rows
    dx = norm.bwd_op()(dy, x, (N,), *stats, *params, mask)[0]
    assert_close(dx[rows], grads_ref[0], torch.bfloat16, "bwd", msg="dx")
