"""Softmax and LogSoftmax: parity with torch.nn.functional over dtypes, shapes, every dim and
layouts; dtype=; -inf/+inf/NaN; autograd (gradcheck, gradgradcheck), opcheck, compile, autocast,
modules and bad input.

The oracle is torch evaluated in float64 on the upcast inputs, rounded to the result dtype.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close, requires_cuda

ops = torch.ops.fused_norm
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FUNCS = {"softmax": (fused_norm.softmax, F.softmax), "log_softmax": (fused_norm.log_softmax,
                                                                     F.log_softmax)}
# 1-D .. 4-D, with sizes 1, odd and powers of two, so that every dim is once the last (a row
# problem) and once in the middle (a strided one), with tails of every vector width.
SHAPES = [(1,), (7,), (64,), (1000,), (3, 1), (5, 33), (2, 129), (4, 3, 17), (2, 1, 64),
          (3, 5, 2, 7), (2, 16, 8, 9)]


def reference(fn, x, dim, **kwargs):
    return fn(x.double(), dim, **kwargs).to(x.dtype)


def backward_reference(torch_fn, y, dim, dy):
    """The backward from the saved output y (ours: the backward's input; its rounding is the
    forward's business, tested there), evaluated in float64."""
    y64, g = y.detach().double(), dy.double()
    if torch_fn is F.log_softmax:
        dx = g - y64.exp() * g.sum(dim, keepdim=True)
    else:
        dx = y64 * (g - (g * y64).sum(dim, keepdim=True))
    return dx.to(y.dtype)


def check_forward_backward(name, shape, dim, dtype, device):
    """Ours against the float64 oracle on a random x of `shape`, forward and backward."""
    ours, theirs = FUNCS[name]
    x = (4 * torch.randn(shape, device=device)).to(dtype).requires_grad_()
    y = ours(x, dim)
    assert_close(y, reference(theirs, x.detach(), dim), dtype, "fwd", msg=str(shape))
    dy = torch.randn(shape, device=device).to(dtype)
    (dx,) = torch.autograd.grad(y, x, dy)
    assert_close(dx, backward_reference(theirs, y, dim, dy), dtype, "bwd", msg=str(shape))


def layouts(x):
    """(name, view) pairs of x with the same values in different memory layouts."""
    yield "contiguous", x
    yield "strided", torch.repeat_interleave(x, 2, dim=-1)[..., ::2]
    if x.dim() >= 2:
        yield "transposed", x.transpose(0, -1).contiguous().transpose(0, -1)
    if x.dim() == 4:
        yield "channels_last", x.contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_parity_every_dim_and_layout(device, name, dtype, shape):
    ours, theirs = FUNCS[name]
    x = (3 * torch.randn(shape, device=device)).to(dtype)
    for dim in range(-x.dim(), x.dim()):
        expected = reference(theirs, x, dim)
        dy = torch.randn(shape, device=device).to(dtype)
        for layout, xv in layouts(x):
            xv = xv.detach().requires_grad_()
            y = ours(xv, dim)
            msg = f"{name} {shape} dim={dim} {layout}"
            assert y.is_contiguous(), msg  # torch's softmax output is contiguous too
            assert_close(y, expected, dtype, "fwd", msg=msg)
            (dx,) = torch.autograd.grad(y, xv, dy)
            assert_close(dx, backward_reference(theirs, y, dim, dy), dtype, "bwd", msg=msg)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_long_rows(device, name, dtype):
    for shape, dim in (((2, 131072), -1), ((3, 70001), 1), ((2, 40000, 3), 1)):
        check_forward_backward(name, shape, dim, dtype, device)


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_strided_pieces(device, name, dtype):
    # A dim other than the last, with the elements after it (B) cut into pieces of up to 1024
    # per step: several pieces and a partial last chunk (2500), pieces narrowed so that each
    # thread gets one (A = 1), more slices than one sum block (300 > 256) with the forward's
    # exponentials recomputed (300 x 1100 too many to keep) and kept (300 x 40), and B = 1023.
    for shape, dim in (((5, 2500), 0), ((1, 300, 1100), 1), ((1, 300, 40), 1), ((3, 7, 1023), 1),
                       ((2, 9, 40), 1)):
        check_forward_backward(name, shape, dim, dtype, device)


@pytest.mark.parametrize("name", FUNCS)
def test_zero_dim_and_empty(device, name):
    ours, theirs = FUNCS[name]
    for x, dim in ((torch.tensor(2.5, device=device), 0), (torch.tensor(-1.0, device=device), -1),
                   (torch.empty(0, 5, device=device), 1), (torch.empty(3, 0, device=device), 1),
                   (torch.empty(3, 0, 2, device=device), 0)):
        x.requires_grad_()
        y = ours(x, dim)
        expected = theirs(x.detach(), dim)
        assert y.shape == expected.shape
        torch.testing.assert_close(y, expected)
        (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
        assert dx.shape == x.shape


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_inf_and_nan_like_torch(device, name, dtype):
    ours, theirs = FUNCS[name]
    inf, nan = float("inf"), float("nan")
    rows = [[-inf] * 5, [1.0, -inf, 2.0, -inf, 0.0], [1.0, inf, 2.0, 3.0, 4.0],
            [inf, inf, 0.0, 0.0, 0.0], [1.0, nan, 2.0, 3.0, 4.0], [-inf, nan, -inf, 1.0, 1.0],
            [-inf, -inf, 5.0, -inf, -inf]]
    x = torch.tensor(rows, device=device).to(dtype)
    # Wide rows too, so that the specials sit in the vector part and in the tail.
    wide = torch.cat([x, torch.zeros(len(rows), 40, device=device, dtype=dtype), x], dim=1)
    for t in (x, wide):
        for dim in (1, 0):
            y = ours(t, dim)
            assert_close(y, reference(theirs, t, dim), dtype, "fwd", msg=f"dim={dim}")
    assert ours(x, 1)[0].isnan().all()  # a row of all -inf is NaN


@pytest.mark.parametrize("name", FUNCS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_logits_keep_their_precision(device, name, dtype):
    """log_softmax is (x - max) - log(sum), in that order, as torch's: x - (max + log(sum))
    rounds to the precision of max, which for logits of 1e4 in float32 is 1e-3 off."""
    big = 3e38 if dtype == torch.float64 else (6e4 if dtype == torch.float16 else 1e7)
    rows = torch.tensor([[big, big - 1, big - 2, big, big - 0.5]], dtype=torch.float64)
    rows = torch.cat([rows, rows * 1e-3, torch.full((1, 5), 1e4, dtype=torch.float64)])
    ours, theirs = FUNCS[name]
    for width in (5, 45):  # a short row and a row with a vector part
        x = rows.repeat(1, width // 5).to(device, dtype)
        for dim in (1, 0):
            t = x if dim == 1 else x.t().contiguous()
            assert_close(ours(t, dim), reference(theirs, t, dim), dtype, "fwd", msg=f"dim={dim}")


def test_dtype_argument(device):
    x = torch.randn(4, 33, device=device, dtype=torch.float16)
    for name, (ours, theirs) in FUNCS.items():
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            y = ours(x, 1, dtype=dtype)
            assert y.dtype == dtype
            assert_close(y, reference(theirs, x.to(dtype), 1), dtype, "fwd", msg=name)
        ints = torch.arange(12, device=device).reshape(3, 4)
        y = ours(ints, 0, dtype=torch.float32)
        assert_close(y, theirs(ints, 0, dtype=torch.float32), torch.float32, "fwd", msg=name)
        # The gradient flows back through the cast to the input's dtype.
        xg = x.clone().requires_grad_()
        ours(xg, -1, dtype=torch.float32).sum().backward()
        assert xg.grad.dtype == torch.float16


@pytest.mark.parametrize("shape", [(5,), (3, 4), (2, 3, 4), (2, 3, 4, 5)], ids=str)
def test_implicit_dim_like_torch(shape):
    x = torch.randn(shape)
    for name, (ours, theirs) in FUNCS.items():
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y = ours(x)
            expected = theirs(x)
        assert [str(w.message) for w in caught[:1]] == [str(w.message) for w in caught[1:]]
        # The warning names the caller's line, as torch's does.
        assert all(w.filename == __file__ for w in caught)
        torch.testing.assert_close(y, expected)
        module = fused_norm.LogSoftmax if name == "log_softmax" else fused_norm.Softmax
        with pytest.warns(UserWarning, match="Implicit dimension choice"):
            torch.testing.assert_close(module()(x), expected)


def test_modules_are_torch_modules(device):
    x = torch.randn(2, 3, 4, device=device, requires_grad=True)
    for ours_cls, theirs_cls in ((fused_norm.Softmax, torch.nn.Softmax),
                                 (fused_norm.LogSoftmax, torch.nn.LogSoftmax)):
        for dim in (0, 1, -1):
            m = ours_cls(dim=dim)
            assert isinstance(m, theirs_cls)
            assert repr(m) == repr(theirs_cls(dim=dim))
            torch.testing.assert_close(m(x), theirs_cls(dim=dim)(x))


# --------------------------------------------------------------------------------------------
# Autograd, opcheck, compile, autocast


@pytest.mark.parametrize("log", [False, True])
@pytest.mark.parametrize("shape,dim", [((3, 7), -1), ((2, 5, 3), 1), ((4, 3, 2), 0), ((6,), 0)])
def test_gradcheck_and_gradgradcheck(device, log, shape, dim):
    fn = fused_norm.log_softmax if log else fused_norm.softmax
    x = torch.randn(shape, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fn(t, dim), (x,))
    assert torch.autograd.gradgradcheck(lambda t: fn(t, dim), (x,))


def test_opcheck(device):
    for log in (False, True):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            for shape, dim in (((4, 33), -1), ((3, 5, 6), 1), ((2, 3, 4, 5), 0), ((), 0)):
                x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
                y = ops.softmax_fwd(x, dim, log)
                dy = torch.randn_like(y)
                torch.library.opcheck(ops.softmax_fwd, (x, dim, log))
                torch.library.opcheck(ops.softmax_bwd, (dy, y.detach(), dim, log))
                torch.library.opcheck(ops.softmax_bwd,
                                      (dy.requires_grad_(), y.detach().requires_grad_(), dim, log))


@pytest.mark.parametrize("cls", [fused_norm.Softmax, fused_norm.LogSoftmax])
def test_compile_fullgraph(device, cls):
    torch._dynamo.reset()
    m = cls(dim=1)
    compiled = torch.compile(m, fullgraph=True)
    x = torch.randn(4, 6, 5, device=device, requires_grad=True)
    y = compiled(x)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y) + x.detach())
    expected = m(x)
    (dx_expected,) = torch.autograd.grad(expected, x, torch.ones_like(y) + x.detach())
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(dx, dx_expected)


@requires_cuda
def test_autocast_cuda_float32():
    x = torch.randn(4, 8, device="cuda", dtype=torch.float16)
    with torch.autocast("cuda", dtype=torch.float16):
        for name, (ours, theirs) in FUNCS.items():
            y, expected = ours(x, -1), theirs(x, -1)
            assert y.dtype == expected.dtype == torch.float32
            torch.testing.assert_close(y, expected)


def test_autocast_cpu_keeps_dtype():
    x = torch.randn(4, 8, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for ours, theirs in FUNCS.values():
            assert ours(x, -1).dtype == theirs(x, -1).dtype == torch.bfloat16


# --------------------------------------------------------------------------------------------
# Bad input: torch's exception types and messages


def raises_like(fn_ours, fn_theirs):
    with pytest.raises(Exception) as theirs:
        fn_theirs()
    with pytest.raises(type(theirs.value)) as ours:
        fn_ours()
    assert str(ours.value).splitlines()[0] == str(theirs.value).splitlines()[0]


@pytest.mark.parametrize("name", FUNCS)
def test_bad_input(device, name):
    ours, theirs = FUNCS[name]
    x = torch.randn(3, 4, device=device)
    for dim in (2, -3, 5):
        raises_like(lambda: ours(x, dim), lambda: theirs(x, dim))
    raises_like(lambda: ours(torch.tensor(1.0, device=device), 1),
                lambda: theirs(torch.tensor(1.0, device=device), 1))
    for dtype in (torch.long, torch.int32, torch.bool, torch.complex64):
        t = torch.ones(3, 4, device=device, dtype=dtype)
        for dim in (-1, 0):
            raises_like(lambda: ours(t, dim), lambda: theirs(t, dim))
    raises_like(lambda: ours(x, 0, dtype=torch.long), lambda: theirs(x, 0, dtype=torch.long))
    # dim as torch's parser takes an int: TypeError for the rest, in torch's words.
    for dim in (1.0, "1", [1], (1,), True, torch.tensor([1]), torch.tensor(1.0)):
        raises_like(lambda: ours(x, dim), lambda: theirs(x, dim))
    for dim in (np.int64(1), torch.tensor(1)):
        torch.testing.assert_close(ours(x, dim), theirs(x, 1))


# --------------------------------------------------------------------------------------------
# Every CPU variant (portable, AVX2, AVX-512), each in a fresh process (the variant is picked once)

CAPABILITY_CHECK = """
import torch, torch.nn.functional as F, fused_norm
torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2), (torch.float64, 1e-10)):
    for shape, dim in (((3, 37), -1), ((2, 1000), -1), ((4, 37, 5), 1), ((2, 9, 100), 1),
                       ((70, 3), 0)):
        x = (3 * torch.randn(shape)).to(dtype).requires_grad_()
        dy = torch.randn(shape).to(dtype)
        for ours, theirs in ((fused_norm.softmax, F.softmax), (fused_norm.log_softmax, F.log_softmax)):
            y = ours(x, dim)
            (dx,) = torch.autograd.grad(y, x, dy)
            x64 = x.detach().double().requires_grad_()
            want = theirs(x64, dim)
            (want_dx,) = torch.autograd.grad(want, x64, dy.double())
            for got, exp in ((y, want), (dx, want_dx)):
                err = ((got.double() - exp).abs().max() / (exp.abs().max() + 1)).item()
                assert err < tol * 10, (ours.__name__, dtype, shape, dim, err)
print("ok")
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_cpu_capability_variants(capability):
    env = dict(os.environ, FUSED_NORM_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, "-c", CAPABILITY_CHECK], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
