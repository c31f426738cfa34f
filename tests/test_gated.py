"""SwiGLU and GeGLU: parity with the composite ``act(a) * b`` over dtypes, shapes and layouts,
both forms (chunked and two-input); autograd (gradcheck, gradgradcheck), opcheck, compile, modules
and bad input.

The oracle is the composite evaluated in float64 on the upcast inputs, rounded to the result
dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
import functools

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close

ops = torch.ops.fused_norm
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (name, ours(input, other=None), gate)
UNITS = [
    ("swiglu", fused_norm.swiglu, F.silu),
    ("geglu", fused_norm.geglu, F.gelu),
    ("geglu_tanh", functools.partial(fused_norm.geglu, approximate="tanh"),
     functools.partial(F.gelu, approximate="tanh")),
]
IDS = [u[0] for u in UNITS]
# Last dims (the chunked form's halves) with tails of every vector width, and long rows.
SHAPES = [(2,), (1, 2), (3, 14), (4, 64), (2, 3, 130), (5, 2, 1, 34), (3, 4098), (2, 40002)]


def reference(gate, a, b):
    return (gate(a.double()) * b.double()).to(a.dtype)


def reference_grads(gate, a, b, dy):
    a64, b64 = (t.detach().double().requires_grad_() for t in (a, b))
    da, db = torch.autograd.grad(gate(a64) * b64, (a64, b64), dy.double())
    return da.to(a.dtype), db.to(b.dtype)


def scaled_randn(shape, device, dtype, scale=3):
    """Gate inputs spread over the activation's curved range; b and dy of unit scale, so that the
    gradient's size (and its float32 rounding) stays that of the gate's derivative."""
    return (scale * torch.randn(shape, device=device)).to(dtype)


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_chunked_parity(device, unit, dtype, shape):
    _, ours, gate = unit
    H = shape[-1] // 2
    x = torch.cat([scaled_randn((*shape[:-1], H), device, dtype),
                   scaled_randn((*shape[:-1], H), device, dtype, scale=1)], -1)
    a, b = x.chunk(2, -1)
    dy = scaled_randn(a.shape, device, dtype, scale=1)
    expected = reference(gate, a, b)
    da, db = reference_grads(gate, a, b, dy)
    views = [("contiguous", x), ("strided", torch.repeat_interleave(x, 2, 0)[::2])]
    if x.dim() >= 2:
        views.append(("transposed", x.transpose(0, -2).contiguous().transpose(0, -2)))
    for layout, xv in views:
        xv = xv.detach().requires_grad_()
        y = ours(xv)
        assert_close(y, expected, dtype, "fwd", msg=layout)
        (dx,) = torch.autograd.grad(y, xv, dy)
        assert_close(dx, torch.cat([da, db], -1), dtype, "bwd", msg=layout)


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (1,), (7,), (3, 33), (2, 3, 64), (2, 65, 3)], ids=str)
def test_two_input_parity(device, unit, dtype, shape):
    _, ours, gate = unit
    a = scaled_randn(shape, device, dtype)
    b, dy = (scaled_randn(shape, device, dtype, scale=1) for _ in range(2))
    da, db = reference_grads(gate, a, b, dy)
    for layout, (av, bv) in (("contiguous", (a, b)),
                             ("transposed", (a.mT.contiguous().mT, b) if a.dim() >= 2 else (a, b))):
        av, bv = av.detach().requires_grad_(), bv.detach().requires_grad_()
        y = ours(av, bv)
        assert_close(y, reference(gate, a, b), dtype, "fwd", msg=layout)
        ga, gb = torch.autograd.grad(y, (av, bv), dy)
        assert_close(ga, da, dtype, "bwd", msg=layout)
        assert_close(gb, db, dtype, "bwd", msg=layout)


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_empty_and_special_values(device, unit):
    _, ours, gate = unit
    for shape in ((0, 4), (3, 0), (2, 0, 6)):
        x = torch.randn(shape, device=device, requires_grad=True)
        y = ours(x)
        assert y.shape == x.chunk(2, -1)[0].shape
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert dx.shape == x.shape
    inf, nan = float("inf"), float("nan")
    specials = torch.tensor([0.0, -0.0, inf, -inf, nan, 1e30, -1e30, 30.0, -30.0, 1.0],
                            device=device)
    a = specials.repeat_interleave(len(specials))
    b = specials.repeat(len(specials))
    expected = gate(a) * b
    if gate is F.gelu:
        # torch's CPU erf-GELU gives NaN at +inf; ours (the shared activation.h math) gives the
        # limit, gelu(+inf) = +inf.
        expected = torch.where(a == inf, a * b, expected)
    torch.testing.assert_close(ours(a, b), expected, equal_nan=True)
    torch.testing.assert_close(ours(torch.cat([a, b])), expected, equal_nan=True)


@pytest.mark.parametrize("unit", UNITS, ids=IDS)
def test_gradcheck_and_gradgradcheck(device, unit):
    _, ours, _ = unit
    x = torch.randn(3, 10, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))
    a, b = (torch.randn(2, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
            for _ in range(2))
    assert torch.autograd.gradcheck(ours, (a, b))
    assert torch.autograd.gradgradcheck(ours, (a, b))


def test_opcheck(device):
    for activation in ("silu", "gelu", "gelu_tanh"):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            x = torch.randn(4, 3, 34, device=device, dtype=dtype, requires_grad=True)
            dy = torch.randn(4, 3, 17, device=device, dtype=dtype)
            a, b = (t.detach().clone().requires_grad_() for t in x.chunk(2, -1))
            torch.library.opcheck(ops.gated_chunk_fwd, (x, activation))
            torch.library.opcheck(ops.gated_chunk_bwd, (dy, x, activation))
            torch.library.opcheck(ops.gated_chunk_bwd,
                                  (dy.clone().requires_grad_(), x, activation))
            torch.library.opcheck(ops.gated_fwd, (a, b, activation))
            torch.library.opcheck(ops.gated_bwd, (dy, a, b, activation))
            torch.library.opcheck(ops.gated_bwd, (dy.clone().requires_grad_(), a, b, activation))


@pytest.mark.parametrize("module", [fused_norm.SwiGLU(), fused_norm.GeGLU(),
                                    fused_norm.GeGLU(approximate="tanh")], ids=repr)
def test_modules_and_compile_fullgraph(device, module):
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(4, 5, 12, device=device, requires_grad=True)
    a, b = (torch.randn(4, 6, device=device, requires_grad=True) for _ in range(2))
    for args in ((x,), (a, b)):
        y = compiled(*args)
        expected = module(*args)
        torch.testing.assert_close(y, expected)
        dy = torch.randn_like(y)
        torch.testing.assert_close(torch.autograd.grad(y, args, dy),
                                   torch.autograd.grad(expected, args, dy))
    assert y.shape == (4, 6)


def test_module_repr_and_state():
    assert repr(fused_norm.GeGLU(approximate="tanh")) == "GeGLU(approximate='tanh')"
    assert repr(fused_norm.SwiGLU()) == "SwiGLU()"
    assert fused_norm.SwiGLU().state_dict() == {}


def raises(exc, match, fn):
    with pytest.raises(exc) as info:
        fn()
    assert str(info.value).splitlines()[0] == match


def test_bad_input(device):
    x = torch.randn(3, 5, device=device)
    raises(RuntimeError, "Halving dimension must be even, but dimension 1 is size 5",
           lambda: fused_norm.swiglu(x))
    raises(RuntimeError, "glu does not support scalars because halving size must be even",
           lambda: fused_norm.geglu(torch.tensor(1.0, device=device)))
    raises(RuntimeError, "approximate argument must be either none or tanh.",
           lambda: fused_norm.geglu(x[:, :4], approximate="exact"))
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh"):
        fused_norm.GeGLU(approximate="fast")
    raises(RuntimeError, "gated: expected b of shape [3, 5], but got [3, 4]",
           lambda: fused_norm.swiglu(x, x[:, :4]))
    raises(RuntimeError, "gated: expected b of dtype Float, but got Double",
           lambda: fused_norm.swiglu(x, x.double()))
    raises(NotImplementedError, "\"gated\" not implemented for 'Long'",
           lambda: fused_norm.swiglu(torch.ones(3, 4, dtype=torch.long, device=device)))
    with pytest.raises(ValueError, match="unknown activation 'relu'"):
        ops.gated_fwd(x, x, "relu")


# Every CPU variant (portable, AVX2, AVX-512), each in a fresh process (the variant is picked once)
CAPABILITY_CHECK = """
import torch, torch.nn.functional as F, fused_norm
torch.manual_seed(0)
gates = (("silu", fused_norm.swiglu, F.silu), ("gelu", fused_norm.geglu, F.gelu))
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)):
    for shape in ((3, 2), (5, 70), (2, 3, 1026)):
        x = (2 * torch.randn(shape)).to(dtype).requires_grad_()
        for name, ours, gate in gates:
            y = ours(x)
            dy = torch.randn(y.shape).to(dtype)
            (dx,) = torch.autograd.grad(y, x, dy)
            x64 = x.detach().double().requires_grad_()
            a, b = x64.chunk(2, -1)
            want = gate(a) * b
            (want_dx,) = torch.autograd.grad(want, x64, dy.double())
            for got, exp in ((y, want), (dx, want_dx)):
                err = ((got.double() - exp).abs().max() / (exp.abs().max() + 1)).item()
                assert err < tol * 10, (name, dtype, shape, err)
print("ok")
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_cpu_capability_variants(capability):
    env = dict(os.environ, FUSED_NORM_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, "-c", CAPABILITY_CHECK], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
