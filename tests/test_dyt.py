"""DyT (Dynamic Tanh): parity with the plain torch composition weight * tanh(alpha * x) + bias
over dtypes (mixed fp32 parameters with 16-bit input), shapes and layouts, forward and all four
gradients; gradcheck and gradgradcheck; opcheck; torch.compile; the module; bad input;
determinism.

The oracle is the composition evaluated in float64 on the upcast inputs, its results rounded to
the tested dtypes.
"""

from __future__ import annotations

import re

import pytest
import torch

import fused_norm
from fused_norm.reference import dyt_ref as composition
from conftest import assert_close, requires_cuda

ops = torch.ops.fused_norm

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (x dtype, param dtype): each dtype with its own parameters, 16-bit input with float32 ones.
DTYPE_PAIRS = [pytest.param(d, d, id=str(d)[6:]) for d in DTYPES] + [
    pytest.param(d, torch.float32, id=f"{str(d)[6:]}-fp32params")
    for d in (torch.float16, torch.bfloat16)
]
# Which of weight and bias are given.
AFFINES = ["weight+bias", "weight", "bias", "none"]

# (input shape, parameter shape): rows of 1, odd sizes, powers of two, several trailing dims.
SHAPES = [
    pytest.param((1, 1), (1,), id="1x1"),
    pytest.param((5,), (5,), id="1d"),
    pytest.param((3, 17), (17,), id="3x17"),
    pytest.param((2, 5, 64), (64,), id="2x5x64"),
    pytest.param((4, 3, 5), (3, 5), id="ns2d"),
    pytest.param((7, 1000), (1000,), id="7x1000"),
    pytest.param((33, 256), (256,), id="33x256"),
]


def make_params(shape, affine, dtype, device, alpha=0.7):
    alpha_t = torch.tensor([alpha], dtype=dtype, device=device)
    w = torch.randn(shape, dtype=dtype, device=device) if "weight" in affine else None
    b = torch.randn(shape, dtype=dtype, device=device) if "bias" in affine else None
    return alpha_t, w, b


def oracle(x, alpha, w, b, dy):
    """The composition's y, dx, dalpha, dweight, dbias in float64, rounded to the dtypes of x
    and of the parameters."""
    leaves = [t.detach().double().requires_grad_() if t is not None else None
              for t in (x, alpha, w, b)]
    y = composition(*leaves)
    given = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(y, given, dy.double()) if x.numel() else [
        torch.zeros_like(t) for t in given]
    it = iter(grads)
    out = [None if t is None else next(it).to(t.dtype) for t in (x, alpha, w, b)]
    return y.detach().to(x.dtype), out


def ours(x, alpha, w, b, dy):
    leaves = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, alpha, w, b)]
    y = fused_norm.dyt(*leaves)
    y.backward(dy)
    return y.detach(), [None if t is None else t.grad for t in leaves]


def check_parity(x, alpha, w, b, dy=None):
    dy = torch.randn_like(x) if dy is None else dy
    y, grads = ours(x, alpha, w, b, dy)
    y_ref, grads_ref = oracle(x, alpha, w, b, dy)
    n = w.numel() if w is not None else (b.numel() if b is not None else 1)
    rows = max(x.numel() // max(n, 1), 1)
    assert_close(y, y_ref, x.dtype, "fwd", msg="y")
    for name, g, r, count in zip(("dx", "dalpha", "dweight", "dbias"), grads, grads_ref,
                                 (1, x.numel(), rows, rows)):
        if r is None:
            assert g is None, name
            continue
        kind = "bwd" if name == "dx" else "wgrad"
        assert_close(g, r, r.dtype, kind, rows=count, msg=name)


# --------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("affine", AFFINES)
@pytest.mark.parametrize("shape, ns", SHAPES)
@pytest.mark.parametrize("dtype, param_dtype", DTYPE_PAIRS)
def test_parity(dtype, param_dtype, shape, ns, affine, device):
    x = (torch.randn(shape, device=device) * 2).to(dtype)
    alpha, w, b = make_params(ns, affine, param_dtype, device)
    check_parity(x, alpha, w, b)


@pytest.mark.parametrize("dtype, param_dtype", DTYPE_PAIRS)
def test_parity_large(dtype, param_dtype, device):
    M, N = (1024, 4096) if device == "cuda" else (256, 4096)
    x = torch.randn(M, N, device=device).to(dtype)
    alpha, w, b = make_params((N,), "weight+bias", param_dtype, device, alpha=0.3)
    check_parity(x, alpha, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_parity_long_row(dtype, device):
    x = torch.randn(3, 1 << 18, device=device).to(dtype)
    alpha, w, b = make_params((1 << 18,), "weight+bias", dtype, device)
    check_parity(x, alpha, w, b)


@pytest.mark.parametrize("layout", ["transposed", "strided", "offset", "expanded"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_non_contiguous(dtype, layout, device):
    N = 48
    if layout == "transposed":
        x = torch.randn(N, 6, device=device).to(dtype).t()
    elif layout == "strided":
        x = torch.randn(5, 2 * N, device=device).to(dtype)[:, ::2]
    elif layout == "offset":
        x = torch.randn(5 * N + 1, device=device).to(dtype)[1:].view(5, N)
    else:
        x = torch.randn(1, N, device=device).to(dtype).expand(4, N)
    assert layout == "offset" or not x.is_contiguous()
    alpha, w, b = make_params((N,), "weight+bias", dtype, device)
    dy = torch.randn(x.shape[1], x.shape[0], device=device).to(dtype).t()  # non-contiguous too
    check_parity(x, alpha, w, b, dy=dy)
    assert fused_norm.dyt(x, alpha, w, b).is_contiguous()


@pytest.mark.parametrize("what", ["x", "weight", "dy", "all"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_misaligned_pointers(dtype, what, device):
    """Views starting at element offset 1 must not be read with 16-byte vector loads."""
    M, N = 8, 1024

    def shifted(*shape):
        n = 1
        for s in shape:
            n *= s
        return torch.randn(n + 1, device=device).to(dtype)[1:].view(shape)

    def plain(*shape):
        return torch.randn(shape, device=device).to(dtype)

    mk = {k: (shifted if what in (k, "all") else plain) for k in ("x", "weight", "dy")}
    x, w, dy = mk["x"](M, N), mk["weight"](N), mk["dy"](M, N)
    b = mk["weight"](N)
    alpha = torch.tensor([0.6], dtype=dtype, device=device)
    check_parity(x, alpha, w, b, dy=dy)


@pytest.mark.parametrize("shape, ns", [((0, 8), (8,)), ((3, 0), (0,)), ((0,), (0,)),
                                       ((2, 0, 4), (4,))])
def test_zero_size(shape, ns, device):
    x = torch.randn(shape, device=device, requires_grad=True)
    alpha, w, b = make_params(ns, "weight+bias", torch.float32, device)
    params = [t.requires_grad_() for t in (alpha, w, b)]
    y = fused_norm.dyt(x, *params)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.shape == x.shape
    for p in params:
        assert torch.equal(p.grad, torch.zeros_like(p)), "a sum over no elements is 0"


def test_zero_dim_input(device):
    # A 0-dim alpha: with alpha of shape [1] the composition itself would broadcast y to [1].
    x = torch.tensor(0.8, device=device, dtype=torch.float64)
    alpha = torch.tensor(0.5, device=device, dtype=torch.float64)
    check_parity(x, alpha, None, None)
    w, b = torch.tensor(1.5, device=device, dtype=torch.float64), torch.tensor(
        -0.2, device=device, dtype=torch.float64)
    check_parity(x, alpha, w, b)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_nan_inf_propagation(dtype, device):
    x = torch.randn(4, 32, device=device).to(dtype)
    x[0, 3], x[1, 5], x[2, 7] = float("nan"), float("inf"), float("-inf")
    alpha, w, b = make_params((32,), "weight+bias", dtype, device)
    y = fused_norm.dyt(x, alpha, w, b)
    torch.testing.assert_close(y, composition(x, alpha, w, b).to(dtype), equal_nan=True,
                               atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("with_params", [True, False])
@pytest.mark.parametrize("mask", [[True, True, True, True], [True, False, False, False],
                                  [False, True, False, False], [False, False, True, True],
                                  [False, False, False, False]])
def test_bwd_op_output_mask(mask, with_params, device):
    x = torch.randn(6, 40, device=device)
    dy = torch.randn_like(x)
    alpha, w, b = make_params((40,), "weight+bias" if with_params else "none", torch.float32,
                              device)
    full = ops.dyt_bwd(dy, x, alpha, w, b, [True, True, True, True])
    part = ops.dyt_bwd(dy, x, alpha, w, b, mask)
    for i, (name, f, p) in enumerate(zip(("dx", "dalpha", "dweight", "dbias"), full, part)):
        param = (None, alpha, w, b)[i]
        wanted = mask[i] and (i < 2 or param is not None)
        if wanted:
            assert torch.equal(p, f), name
        else:
            assert p.shape == (0,), f"{name} not asked for: expected an empty [0] tensor"


# --------------------------------------------------------------------------------------------
# gradcheck / gradgradcheck (float64), opcheck, compile
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, ns", [((3, 5), (5,)), ((2, 3, 4), (3, 4)), ((4, 1), (1,))])
@pytest.mark.parametrize("affine", AFFINES)
def test_gradcheck_and_gradgradcheck(affine, shape, ns, device):
    x = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
    alpha, w, b = make_params(ns, affine, torch.float64, device)
    given = [t.requires_grad_() for t in (alpha, w, b) if t is not None]

    def fn(x, alpha, *p):
        it = iter(p)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return fused_norm.dyt(x, alpha, ww, bb)

    assert torch.autograd.gradcheck(fn, (x, *given))
    assert torch.autograd.gradgradcheck(fn, (x, *given))


@pytest.mark.parametrize("affine", ["weight+bias", "none"])
@pytest.mark.parametrize("dtype, param_dtype", [(torch.float32, torch.float32),
                                                (torch.bfloat16, torch.float32)])
def test_opcheck(dtype, param_dtype, affine, device):
    x = torch.randn(3, 4, 24, device=device).to(dtype).requires_grad_()
    alpha, w, b = make_params((24,), affine, param_dtype, device)
    params = [None if t is None else t.requires_grad_() for t in (alpha, w, b)]
    torch.library.opcheck(ops.dyt_fwd.default, (x, *params))
    dy = torch.randn_like(x).requires_grad_()
    for mask in ([True, True, True, True], [True, False, False, False],
                 [False, True, True, False]):
        torch.library.opcheck(ops.dyt_bwd.default, (dy, x, *params, mask))


def _recording_backend(graphs):
    from torch._inductor.compile_fx import compile_fx

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return compile_fx(gm, example_inputs)

    return backend


def test_compile_module_fullgraph(device):
    torch._dynamo.reset()
    N = 64
    m = fused_norm.DyT(N, device=device)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn_like(p))
    graphs = []
    cm = torch.compile(m, fullgraph=True, dynamic=False, backend=_recording_backend(graphs))
    x = torch.randn(4, 7, N, device=device)
    dy = torch.randn(4, 7, N, device=device)
    xe, xc = x.clone().requires_grad_(), x.clone().requires_grad_()
    m(xe).backward(dy)
    g_eager = [p.grad.clone() for p in m.parameters()]
    m.zero_grad()
    y_comp = cm(xc)
    y_comp.backward(dy)
    assert any("fused_norm.dyt_fwd" in g for g in graphs), graphs
    assert_close(y_comp, m(x).detach(), torch.float32, "fwd", msg="compiled y")
    assert_close(xc.grad, xe.grad, torch.float32, "bwd", msg="compiled dx")
    for p, g in zip(m.parameters(), g_eager):
        assert_close(p.grad, g, torch.float32, "wgrad", rows=28 * N, msg="compiled dparam")
    torch._dynamo.reset()


@requires_cuda
def test_cuda_graph_reads_alpha_from_memory():
    """alpha is read by the kernels from device memory: a captured graph sees a new value."""
    N = 256
    x = torch.randn(16, N, device="cuda")
    alpha, w, b = make_params((N,), "weight+bias", torch.float32, "cuda", alpha=0.5)
    fused_norm.dyt(x, alpha, w, b)  # warm up outside the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = fused_norm.dyt(x, alpha, w, b)
    alpha.fill_(1.3)
    graph.replay()
    torch.cuda.synchronize()
    assert_close(y, composition(x, alpha, w, b), torch.float32, "fwd", msg="replayed y")


# --------------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------------


def test_module_parameters_and_state_dict(device):
    m = fused_norm.DyT((3, 8), device=device)
    assert isinstance(m, torch.nn.Module)
    assert m.alpha.shape == (1,) and torch.equal(m.alpha, torch.full((1,), 0.5, device=device))
    assert torch.equal(m.weight, torch.ones(3, 8, device=device))
    assert torch.equal(m.bias, torch.zeros(3, 8, device=device))
    assert list(m.state_dict()) == ["alpha", "weight", "bias"]
    ln = torch.nn.LayerNorm((3, 8), device=device)
    with torch.no_grad():
        ln.weight.normal_()
        ln.bias.normal_()
    # A LayerNorm's weight and bias load into a DyT (alpha stays).
    missing, unexpected = m.load_state_dict(ln.state_dict(), strict=False)
    assert missing == ["alpha"] and unexpected == []
    assert torch.equal(m.weight, ln.weight) and torch.equal(m.bias, ln.bias)
    m2 = fused_norm.DyT((3, 8), alpha_init_value=0.1, device=device)
    m2.load_state_dict(m.state_dict())
    x = torch.randn(2, 3, 8, device=device)
    assert torch.equal(m2(x), m(x))
    m2.reset_parameters()
    assert m2.alpha.item() == pytest.approx(0.1)
    assert torch.equal(m2.weight, torch.ones(3, 8, device=device))


def test_module_options_and_repr():
    m = fused_norm.DyT(16, alpha_init_value=0.25, bias=False, dtype=torch.float64)
    assert m.bias is None and m.weight.dtype == torch.float64 and m.alpha.dtype == torch.float64
    assert list(m.state_dict()) == ["alpha", "weight"]
    m = fused_norm.DyT(16, elementwise_affine=False)
    assert m.weight is None and m.bias is None and list(m.state_dict()) == ["alpha"]
    assert repr(m) == "DyT((16,), alpha_init_value=0.5, elementwise_affine=False)"
    x = torch.randn(3, 16)
    torch.testing.assert_close(m(x), torch.tanh(0.5 * x))


def test_module_mixed_precision_params(device):
    """bfloat16 activations through a float32 DyT: the output stays bfloat16."""
    m = fused_norm.DyT(32, device=device)
    x = torch.randn(4, 32, device=device, dtype=torch.bfloat16, requires_grad=True)
    y = m(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and m.alpha.grad.dtype == torch.float32


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def _bad(device):
    f32 = {"device": device}
    return {
        "int-input": ((torch.ones(2, 4, dtype=torch.long, device=device),
                       torch.tensor([0.5], **f32), None, None),
                      NotImplementedError, r"\"dyt\" not implemented for 'Long'"),
        "bool-input": ((torch.ones(2, 4, dtype=torch.bool, device=device),
                        torch.tensor([0.5], **f32), None, None),
                       NotImplementedError, r"not implemented for 'Bool'"),
        "alpha-two-elements": ((torch.randn(2, 4, **f32), torch.tensor([0.5, 0.2], **f32),
                                None, None), RuntimeError, r"alpha to hold one element"),
        "weight-wrong-shape": ((torch.randn(2, 4, **f32), torch.tensor([0.5], **f32),
                                torch.randn(3, **f32), None), RuntimeError,
                               r"weight to have the shape of the input's trailing dimensions"),
        "bias-wrong-shape": ((torch.randn(2, 4, **f32), torch.tensor([0.5], **f32),
                              torch.randn(4, **f32), torch.randn(2, 2, **f32)), RuntimeError,
                             r"bias to have the shape of the input's trailing dimensions"),
        "weight-more-dims": ((torch.randn(4, **f32), torch.tensor([0.5], **f32),
                              torch.randn(1, 4, **f32), None), RuntimeError,
                             r"trailing dimensions \(input of shape \[4\]\)"),
        "weight-fp64-input-fp32": ((torch.randn(2, 4, **f32), torch.tensor([0.5], **f32),
                                    torch.randn(4, dtype=torch.float64, device=device), None),
                                   RuntimeError, r"mixed dtype: expected weight"),
        "alpha-int": ((torch.randn(2, 4, **f32), torch.tensor([1], device=device), None, None),
                      RuntimeError, r"mixed dtype: expected alpha"),
        "params-of-two-dtypes": ((torch.randn(2, 4, dtype=torch.float16, device=device),
                                  torch.tensor([0.5], **f32),
                                  torch.randn(4, dtype=torch.float16, device=device), None),
                                 RuntimeError, r"alpha, weight and bias of one dtype"),
    }


@pytest.mark.parametrize("case", list(_bad("cpu")))
@pytest.mark.parametrize("entry", ["functional", "module-free op"])
def test_bad_input(case, entry, device):
    args, exc, regex = _bad(device)[case]
    fn = fused_norm.dyt if entry == "functional" else ops.dyt_fwd
    with pytest.raises(exc, match=regex):
        fn(*args)
    dy = torch.ones_like(args[0])
    with pytest.raises(exc, match=regex):
        ops.dyt_bwd(dy, *args, [True, True, True, True])


def test_bad_grad_out(device):
    x = torch.randn(2, 4, device=device)
    alpha = torch.tensor([0.5], device=device)
    with pytest.raises(RuntimeError, match=re.escape("expected grad_out of shape [2, 4]")):
        ops.dyt_bwd(torch.ones(2, 5, device=device), x, alpha, None, None, [True] * 4)
    with pytest.raises(RuntimeError, match="expected grad_out of dtype Float"):
        ops.dyt_bwd(torch.ones(2, 4, device=device, dtype=torch.float64), x, alpha, None, None,
                    [True] * 4)


@requires_cuda
@pytest.mark.parametrize("which", ["input", "alpha", "weight", "bias"])
def test_bad_input_mismatched_devices(which):
    dev = {k: "cuda" for k in ("input", "alpha", "weight", "bias")}
    dev[which] = "cpu"
    x = torch.randn(4, 8, device=dev["input"])
    alpha = torch.tensor([0.5], device=dev["alpha"])
    w, b = torch.randn(8, device=dev["weight"]), torch.randn(8, device=dev["bias"])
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        fused_norm.dyt(x, alpha, w, b)
    torch.cuda.synchronize()  # the failed call left no asynchronous error behind


# --------------------------------------------------------------------------------------------
# Determinism and large problems
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grads_deterministic(dtype, device):
    """Two identical backward runs give bitwise-identical dx, dalpha, dweight and dbias."""
    M, N = (4096, 1024) if device == "cuda" else (512, 256)
    x = torch.randn(M, N, device=device).to(dtype)
    dy = torch.randn(M, N, device=device).to(dtype)
    alpha, w, b = make_params((N,), "weight+bias", dtype, device)
    g1 = ops.dyt_bwd(dy, x, alpha, w, b, [True] * 4)
    g2 = ops.dyt_bwd(dy, x, alpha, w, b, [True] * 4)
    for name, a, c in zip(("dx", "dalpha", "dweight", "dbias"), g1, g2):
        assert torch.equal(a, c), f"{name} differs between two identical runs"


@requires_cuda
@pytest.mark.parametrize("shape", [pytest.param((1 << 16, 128), id="65536x128"),
                                   pytest.param((1 << 13, 4096), id="8192x4096"),
                                   pytest.param((1 << 20, 3), id="1Mx3"),
                                   pytest.param((3, 1 << 20), id="3x1M")])
def test_cuda_many_rows_and_long_rows(shape):
    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
    alpha, w, b = make_params(shape[1:], "weight+bias", torch.float32, "cuda")
    check_parity(x, alpha, w, b)


@requires_cuda
def test_cuda_64bit_indexing():
    """More than 2^31 elements in total (rows at offsets past int32): the last rows must come out
    as right as the first, forward and backward (needs ~13 GB of GPU memory)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs a GPU with at least 24 GB for three 4.3 GB tensors")
    N = 4096
    M = (1 << 31) // N + 5
    x = torch.randn(M, N, dtype=torch.bfloat16, device="cuda")
    alpha, w, b = make_params((N,), "weight+bias", torch.bfloat16, "cuda")
    rows = torch.tensor([0, M // 2, M - 2, M - 1], device="cuda")
    dy_rows = torch.randn(len(rows), N, dtype=x.dtype, device="cuda")
    y_ref, grads_ref = oracle(x[rows], alpha, w, b, dy_rows)
    y = ops.dyt_fwd(x, alpha, w, b)
    assert_close(y[rows], y_ref, torch.bfloat16, "fwd", msg="y")
    del y
    dy = torch.zeros_like(x)
    dy[rows] = dy_rows
    dx = ops.dyt_bwd(dy, x, alpha, w, b, [True, False, False, False])[0]
    assert_close(dx[rows], grads_ref[0], torch.bfloat16, "bwd", msg="dx")
