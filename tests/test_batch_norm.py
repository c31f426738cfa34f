"""BatchNorm family (functional, BatchNorm1d/2d/3d, fused ReLU and add + ReLU): parity with
torch over dtypes, shapes and memory formats, running statistics, autograd, opcheck, compile,
autocast and bad input.

The oracle is torch.nn.functional.batch_norm evaluated in float64 on the upcast inputs, its
result rounded to the tested dtype.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import DEVICES, HAS_CUDA, assert_close, requires_cuda

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

# (shape, memory format); shapes hold 1, odd sizes, powers of two and a larger case.
LAYOUTS = [
    pytest.param((7, 3), "contiguous", id="2d"),
    pytest.param((1, 5, 9), "contiguous", id="3d-n1"),
    pytest.param((4, 3, 17), "contiguous", id="3d"),
    pytest.param((4, 6, 17), "nlc", id="3d-channels-last"),
    pytest.param((2, 8, 5, 7), "contiguous", id="4d"),
    pytest.param((2, 8, 5, 7), "channels_last", id="4d-channels-last"),
    pytest.param((3, 1, 4, 4), "contiguous", id="4d-c1"),
    pytest.param((6, 16, 1, 1), "channels_last", id="4d-hw1"),
    pytest.param((2, 3, 3, 4, 5), "contiguous", id="5d"),
    pytest.param((2, 3, 3, 4, 5), "channels_last_3d", id="5d-channels-last"),
    pytest.param((2, 4, 10, 12), "strided", id="4d-strided"),
    # NCHW planes of more than a few vectors take the CPU's by-channel backward: odd planes (a
    # partial last chunk), planes longer than its block of sums, and a larger case.
    pytest.param((3, 16, 9, 9), "contiguous", id="4d-odd-planes"),
    pytest.param((2, 16, 48, 48), "contiguous", id="4d-long-planes"),
    pytest.param((16, 64, 32, 32), "contiguous", id="4d-large"),
    pytest.param((16, 64, 32, 32), "channels_last", id="4d-large-channels-last"),
]


def make_input(shape, layout, dtype, device, offset=0.0):
    if layout == "strided":
        # Every other column of a wider tensor: no memory format the kernels serve as is.
        wide = torch.randn(*shape[:-1], 2 * shape[-1], device=device).to(dtype)
        return (wide[..., ::2] + offset).to(dtype)
    x = (torch.randn(shape, device=device) + offset).to(dtype)
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "channels_last_3d":
        return x.contiguous(memory_format=torch.channels_last_3d)
    if layout == "nlc":
        return x.transpose(1, 2).contiguous().transpose(1, 2)
    return x


def param_dtype_for(dtype, mixed):
    return torch.float32 if mixed else dtype


def make_params(C, dtype, device, affine=True):
    if not affine:
        return None, None
    weight = (torch.rand(C, device=device) + 0.5).to(dtype)
    bias = torch.randn(C, device=device).to(dtype)
    return weight, bias


def make_running(C, dtype, device):
    return (torch.randn(C, device=device) * 0.1).to(dtype), (torch.rand(C, device=device) + 0.5).to(dtype)


def f64(t):
    return None if t is None else t.detach().double()


def ref_forward(x, rm, rv, w, b, training, momentum=0.1, eps=1e-5, residual=None, relu=False):
    """torch in float64: (y in x's dtype, running mean, running var after the update)."""
    rm64, rv64 = f64(rm), f64(rv)
    y = F.batch_norm(f64(x), rm64, rv64, f64(w), f64(b), training, momentum, eps)
    if residual is not None:
        y = y + f64(residual)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype), rm64, rv64


def ref_grads(x, w, b, grad_y, training, rm=None, rv=None, eps=1e-5, residual=None, relu=False):
    leaves = [f64(t).requires_grad_() if t is not None else None for t in (x, w, b, residual)]
    y = F.batch_norm(leaves[0], f64(rm), f64(rv), leaves[1], leaves[2], training, 0.1, eps)
    if residual is not None:
        y = y + leaves[3]
    if relu:
        y = torch.relu(y)
    wanted = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, wanted, f64(grad_y)))
    return [None if t is None else next(grads) for t in leaves]


def assert_layout_kept(y, x):
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        assert y.is_contiguous(memory_format=torch.channels_last)
    elif x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(
            memory_format=torch.channels_last_3d):
        assert y.is_contiguous(memory_format=torch.channels_last_3d)


# --------------------------------------------------------------------------------------------
# Parity: forward, running statistics, backward
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape,layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
def test_forward_backward_parity(device, shape, layout, dtype, training, affine):
    C = shape[1]
    x = make_input(shape, layout, dtype, device).requires_grad_()
    w, b = make_params(C, dtype, device, affine)
    rm, rv = make_running(C, torch.float32 if dtype != torch.float64 else dtype, device)
    if dtype in (torch.float16, torch.bfloat16):
        rm, rv = rm.to(dtype), rv.to(dtype)
    rm_ours, rv_ours = rm.clone(), rv.clone()
    if w is not None:
        w.requires_grad_()
        b.requires_grad_()

    y = fused_norm.batch_norm(x, rm_ours, rv_ours, w, b, training, 0.1, 1e-5)
    y_ref, rm_ref, rv_ref = ref_forward(x, rm, rv, w, b, training)
    assert_close(y, y_ref, dtype, "fwd", msg="y")
    assert_layout_kept(y, x)
    rows = x.numel() // C
    assert_close(rm_ours, rm_ref.to(rm.dtype), dtype, "fwd", msg="running_mean")
    assert_close(rv_ours, rv_ref.to(rv.dtype), dtype, "fwd", msg="running_var")

    grad_y = torch.randn_like(y)
    grads = torch.autograd.grad(y, [t for t in (x, w, b) if t is not None], grad_y)
    ref = ref_grads(x, w, b, grad_y, training, rm, rv)
    assert_close(grads[0], ref[0].to(dtype), dtype, "bwd", msg="dx")
    if w is not None:
        assert_close(grads[1], ref[1].to(dtype), dtype, "wgrad", rows, msg="dweight")
        assert_close(grads[2], ref[2].to(dtype), dtype, "wgrad", rows, msg="dbias")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_half_input_with_float_params_and_stats(device, dtype, layout):
    shape = (4, 6, 5, 5)
    x = make_input(shape, layout, dtype, device).requires_grad_()
    w, b = make_params(6, torch.float32, device)
    w.requires_grad_()
    b.requires_grad_()
    rm, rv = make_running(6, torch.float32, device)
    rm_ours, rv_ours = rm.clone(), rv.clone()
    y = fused_norm.batch_norm(x, rm_ours, rv_ours, w, b, True, 0.1, 1e-5)
    assert y.dtype == dtype
    y_ref, rm_ref, rv_ref = ref_forward(x, rm, rv, w, b, True)
    assert_close(y, y_ref, dtype, "fwd")
    assert_close(rm_ours, rm_ref.float(), torch.float32, "fwd")
    assert_close(rv_ours, rv_ref.float(), torch.float32, "fwd")
    grad_y = torch.randn_like(y)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), grad_y)
    ref = ref_grads(x, w, b, grad_y, True)
    assert dw.dtype == torch.float32 and db.dtype == torch.float32
    assert_close(dx, ref[0].to(dtype), dtype, "bwd")
    assert_close(dw, ref[1].float(), dtype, "wgrad", x.numel() // 6)
    assert_close(db, ref[2].float(), dtype, "wgrad", x.numel() // 6)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_keep_precision_far_from_zero(device, layout):
    # Mean 1000, unit variance, 300k values per channel: a naive sum of squares loses the variance.
    x = make_input((48, 3, 80, 80), layout, torch.float32, device, offset=1000.0)
    mean, var = torch.ops.fused_norm.batch_norm_stats(x)
    x64 = x.double()
    torch.testing.assert_close(mean, x64.mean((0, 2, 3)).float(), atol=1e-4, rtol=1e-6)
    torch.testing.assert_close(var, x64.var((0, 2, 3), unbiased=False).float(), atol=0, rtol=1e-4)


def test_results_are_deterministic(device):
    x = make_input((32, 16, 24, 24), "channels_last", torch.float32, device).requires_grad_()
    w, b = make_params(16, torch.float32, device)
    w.requires_grad_()
    grad_y = torch.randn_like(x)
    runs = []
    for _ in range(2):
        y = fused_norm.batch_norm(x, None, None, w, b, True)
        runs.append([y] + list(torch.autograd.grad(y, (x, w), grad_y)))
    for first, second in zip(*runs):
        assert torch.equal(first, second)


def test_nan_and_inf_propagate_like_torch(device):
    x = torch.randn(4, 3, 5, device=device)
    x[1, 0, 2] = float("nan")
    x[2, 1, 3] = float("inf")
    for training in (True, False):
        rm, rv = make_running(3, torch.float32, device)
        y = fused_norm.batch_norm(x, rm.clone(), rv.clone(), training=training)
        y_ref = F.batch_norm(x, rm.clone(), rv.clone(), training=training)
        torch.testing.assert_close(y, y_ref, equal_nan=True)
        y = fused_norm.batch_norm_relu(x, rm.clone(), rv.clone(), training=training)
        torch.testing.assert_close(y, torch.relu(y_ref), equal_nan=True)


# --------------------------------------------------------------------------------------------
# Fused forms: ReLU, residual add + ReLU
# --------------------------------------------------------------------------------------------


def nlc_shape(shape, layout):
    """A 4-D shape as (N, C, L) for the "nlc" layout (a transposed sequence), else as it is."""
    return (shape[0], shape[1], shape[2] * shape[3]) if layout == "nlc" else shape


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "nlc"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fused", ["relu", "add_relu"])
# The second shape's NCHW backward takes the CPU's by-channel path (the first's planes are short).
@pytest.mark.parametrize("shape", [(4, 8, 6, 5), (2, 16, 12, 12)], ids=["short", "by-channel"])
def test_fused_forms(device, layout, dtype, training, fused, shape):
    shape = nlc_shape(shape, layout)
    C = shape[1]
    x = make_input(shape, layout, dtype, device).requires_grad_()
    residual = make_input(shape, layout, dtype, device).requires_grad_() if fused == "add_relu" else None
    w, b = make_params(C, dtype, device)
    w.requires_grad_()
    b.requires_grad_()
    rm, rv = make_running(C, dtype, device)
    rm_ours, rv_ours = rm.clone(), rv.clone()
    if residual is None:
        y = fused_norm.batch_norm_relu(x, rm_ours, rv_ours, w, b, training)
    else:
        y = fused_norm.batch_norm_add_relu(x, residual, rm_ours, rv_ours, w, b, training)
    y_ref, rm_ref, _ = ref_forward(x, rm, rv, w, b, training, residual=residual, relu=True)
    assert_close(y, y_ref, dtype, "fwd")
    assert_layout_kept(y, x)
    assert_close(rm_ours, rm_ref.to(dtype), dtype, "fwd")
    grad_y = torch.randn_like(y)
    leaves = [t for t in (x, w, b, residual) if t is not None]
    grads = torch.autograd.grad(y, leaves, grad_y)
    ref = [g for g in ref_grads(x, w, b, grad_y, training, rm, rv, residual=residual, relu=True)
           if g is not None]
    # Where bn(x) + residual rounds to exactly 0 in low precision the ReLU mask may differ from
    # float64's: compare only where the float64 pre-activation is clearly away from 0.
    pre = ref_forward(x, rm, rv, w, b, training, residual=residual)[0].double()
    clear = pre.abs() > 4 * torch.finfo(dtype).eps * (1 + pre.abs())
    rows = x.numel() // C
    assert_close(grads[0] * clear, (ref[0] * clear).to(dtype), dtype, "bwd", msg="dx")
    assert_close(grads[1], ref[1].to(dtype), dtype, "wgrad", rows, msg="dweight")
    assert_close(grads[2], ref[2].to(dtype), dtype, "wgrad", rows, msg="dbias")
    if residual is not None:
        assert_close(grads[3] * clear, (ref[3] * clear).to(dtype), dtype, "bwd", msg="dresidual")


def test_residual_without_relu_module(device):
    bn = fused_norm.BatchNorm2d(4).to(device)
    ref = torch.nn.BatchNorm2d(4).to(device)
    x = torch.randn(3, 4, 5, 5, device=device)
    r = torch.randn_like(x)
    torch.testing.assert_close(bn(x, r), ref(x) + r)
    assert "relu" not in repr(bn) and "relu=True" in repr(fused_norm.BatchNorm2d(4, relu=True))


# --------------------------------------------------------------------------------------------
# Modules: torch's semantics of running statistics and state_dict
# --------------------------------------------------------------------------------------------

MODULES = [
    pytest.param("BatchNorm1d", (8, 5), id="1d-2d-input"),
    pytest.param("BatchNorm1d", (8, 5, 7), id="1d"),
    pytest.param("BatchNorm2d", (4, 5, 6, 7), id="2d"),
    pytest.param("BatchNorm3d", (2, 5, 3, 4, 5), id="3d"),
]


@pytest.mark.parametrize("name,shape", MODULES)
@pytest.mark.parametrize("options", [
    {}, {"momentum": None}, {"affine": False}, {"track_running_stats": False},
    {"momentum": 0.3, "eps": 1e-3},
], ids=["default", "cumulative", "no-affine", "no-running-stats", "momentum-eps"])
def test_module_matches_torch_over_training_steps(device, name, shape, options):
    ours = getattr(fused_norm, name)(shape[1], **options).to(device)
    theirs = getattr(torch.nn, name)(shape[1], **options).to(device)
    assert isinstance(ours, getattr(torch.nn, name))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if ours.weight is not None:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.linspace(0.5, 1.5, shape[1]))
                m.bias.copy_(torch.linspace(-1, 1, shape[1]))
    for step in range(3):
        x = torch.randn(shape, device=device) * (step + 1) + step
        torch.testing.assert_close(ours(x), theirs(x))
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, device=device)
    torch.testing.assert_close(ours(x), theirs(x))


def test_state_dict_loads_both_ways(device):
    theirs = torch.nn.BatchNorm2d(6).to(device)
    theirs(torch.randn(4, 6, 3, 3, device=device))
    ours = fused_norm.BatchNorm2d(6).to(device)
    ours.load_state_dict(theirs.state_dict())
    assert int(ours.num_batches_tracked) == 1
    back = torch.nn.BatchNorm2d(6).to(device)
    back.load_state_dict(ours.state_dict())
    ours.eval()
    back.eval()
    x = torch.randn(2, 6, 3, 3, device=device)
    torch.testing.assert_close(ours(x), back(x))
    # A version-1 checkpoint (no num_batches_tracked) loads like torch's.
    old = theirs.state_dict()
    del old["num_batches_tracked"]
    old._metadata[""]["version"] = 1
    legacy = fused_norm.BatchNorm2d(6).to(device)
    legacy.load_state_dict(old)
    assert int(legacy.num_batches_tracked) == 0


def test_module_channels_last_output(device):
    bn = fused_norm.BatchNorm2d(8, relu=True).to(device)
    x = torch.randn(2, 8, 5, 5, device=device).contiguous(memory_format=torch.channels_last)
    y = bn(x)
    assert y.is_contiguous(memory_format=torch.channels_last)


# --------------------------------------------------------------------------------------------
# Autograd: gradcheck / gradgradcheck in float64
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("fused", ["none", "relu", "add_relu"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "nlc"])
def test_gradcheck_and_gradgradcheck(device, training, fused, layout):
    x = make_input(nlc_shape((3, 4, 3, 2), layout), layout, torch.float64,
                   device).requires_grad_()
    w, b = make_params(4, torch.float64, device)
    w.requires_grad_()
    b.requires_grad_()
    rm, rv = make_running(4, torch.float64, device)
    residual = torch.randn_like(x).requires_grad_() if fused == "add_relu" else None

    def fn(x, w, b, *maybe_residual):
        if fused == "none":
            return fused_norm.batch_norm(x, rm.clone(), rv.clone(), w, b, training)
        if fused == "relu":
            return fused_norm.batch_norm_relu(x, rm.clone(), rv.clone(), w, b, training)
        return fused_norm.batch_norm_add_relu(x, maybe_residual[0], rm.clone(), rv.clone(), w, b,
                                              training)

    inputs = (x, w, b) + ((residual,) if residual is not None else ())
    assert torch.autograd.gradcheck(fn, inputs)
    assert torch.autograd.gradgradcheck(fn, inputs)


# --------------------------------------------------------------------------------------------
# opcheck and torch.compile
# --------------------------------------------------------------------------------------------


def _opcheck_samples(device):
    ops = torch.ops.fused_norm
    for layout in ("contiguous", "channels_last"):
        for dtype in (torch.float32, torch.bfloat16):
            x = make_input((3, 4, 5, 2), layout, dtype, device)
            w, b = make_params(4, torch.float32 if dtype == torch.bfloat16 else dtype, device)
            mean, var = ops.batch_norm_stats(x)
            y = ops.batch_norm_elemt(x, mean, var, w, b, None, 1e-5, True)
            dy = torch.randn_like(x)
            sum_dy, sum_dy_xmu, _ = ops.batch_norm_bwd_reduce(dy, x, mean, y, True)
            yield ops.batch_norm_stats, (x,)
            yield ops.batch_norm_elemt, (x, mean, var, w, b, torch.randn_like(x), 1e-5, True)
            yield ops.batch_norm_elemt, (x, mean, var, None, None, None, 1e-3, False)
            yield ops.batch_norm_bwd_reduce, (dy, x, mean, y, True)
            yield ops.batch_norm_bwd_reduce, (dy, x, mean, None, False)
            yield ops.batch_norm_bwd_elemt, (dy, x, mean, var, w, y, sum_dy, sum_dy_xmu, 1e-5, 30)
            yield ops.batch_norm_bwd_elemt, (dy, x, mean, var, w, None, None, None, 1e-5, 1)
            rm, rv = make_running(4, w.dtype, device)
            xg = x.clone().requires_grad_()
            wg, bg = w.clone().requires_grad_(), b.clone().requires_grad_()
            r = torch.randn_like(x).requires_grad_()
            yield ops.batch_norm_fwd, (xg, wg, bg, r, rm, rv, True, 0.1, 1e-5, True)
            yield ops.batch_norm_fwd, (xg, None, bg, None, None, None, True, 0.1, 1e-5, False)
            yield ops.batch_norm_fwd, (xg, wg, None, None, rm, rv, False, 0.1, 1e-5, True)
            for training in (True, False):
                stats = (mean, var) if training else (rm, rv)
                yield ops.batch_norm_bwd, (dy, x, *stats, w, b, y, 1e-5, training,
                                           [True, True, True, True])
                yield ops.batch_norm_bwd, (dy, x, *stats, None, b, None, 1e-3, training,
                                           [True, False, True, False])
                yield ops.batch_norm_bwd, (dy, x, *stats, w, None, y, 1e-5, training,
                                           [False, True, False, True])


def test_opcheck(device):
    for op, args in _opcheck_samples(device):
        torch.library.opcheck(op, args)


@pytest.mark.parametrize("relu", [False, True], ids=["plain", "relu"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_compile_fullgraph(device, relu, training):
    torch._dynamo.reset()
    ours = fused_norm.BatchNorm2d(6, relu=relu).to(device).train(training)
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(4, 6, 5, 5, device=device)
    r = torch.randn_like(x)
    for model in (compiled, eager):
        xi = x.clone().requires_grad_()
        y = model(xi, r)
        y.backward(torch.ones_like(y))
        model.out = (y.detach(), xi.grad, model.weight.grad.clone())
    for a, b in zip(compiled.out, eager.out):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ours.running_mean, eager.running_mean)
    torch.testing.assert_close(ours.running_var, eager.running_var)
    assert int(ours.num_batches_tracked) == int(eager.num_batches_tracked)


# --------------------------------------------------------------------------------------------
# Autocast: BatchNorm keeps the input dtype under autocast, like torch's
# --------------------------------------------------------------------------------------------


def test_autocast_keeps_input_dtype(device):
    dtype = torch.bfloat16
    bn = fused_norm.BatchNorm2d(4).to(device)
    ref = torch.nn.BatchNorm2d(4).to(device)
    x = torch.randn(2, 4, 3, 3, device=device)
    with torch.autocast(device_type=device, dtype=dtype):
        for inp in (x, x.to(dtype)):
            assert bn(inp).dtype == ref(inp).dtype


# --------------------------------------------------------------------------------------------
# Zero-size input and bad input
# --------------------------------------------------------------------------------------------


def test_zero_size(device):
    for shape in [(0, 3, 4), (2, 0, 4), (2, 3, 0)]:
        x = torch.randn(shape, device=device, requires_grad=True)
        rm, rv = torch.zeros(shape[1], device=device), torch.ones(shape[1], device=device)
        y = fused_norm.batch_norm(x, rm, rv, training=True)
        y_ref = F.batch_norm(x.detach(), rm.clone(), rv.clone(), training=True)
        assert y.shape == y_ref.shape
        assert torch.equal(rm, torch.zeros_like(rm)) and torch.equal(rv, torch.ones_like(rv))
        y.sum().backward()
        assert x.grad.shape == x.shape
    bn = fused_norm.BatchNorm2d(3).to(device)
    assert bn(torch.randn(0, 3, 2, 2, device=device)).shape == (0, 3, 2, 2)
    # An empty batch's parameter gradients are torch's zeros (its statistics are NaN).
    ref = torch.nn.BatchNorm2d(3).to(device)
    for module in (bn, ref):
        module(torch.randn(0, 3, 2, 2, device=device, requires_grad=True)).sum().backward()
    torch.testing.assert_close(bn.weight.grad, ref.weight.grad)
    torch.testing.assert_close(bn.bias.grad, ref.bias.grad)


def _raises(exc, match, fn):
    with pytest.raises(exc, match=match):
        fn()


@pytest.mark.parametrize("case", [
    "int-input", "weight-size", "bias-size", "running-mean-size", "running-var-size",
    "eval-without-stats", "one-value-per-channel", "eps-zero", "module-rank", "mixed-dtype",
    "bool-input", "mean-without-var", "var-without-mean", "eval-eps-negative",
    "stats-requiring-grad",
])
def test_bad_input_matches_torch(device, case):
    x = torch.randn(4, 3, 5, device=device)
    ones, zeros = torch.ones(3, device=device), torch.zeros(3, device=device)
    cases = {
        "int-input": (lambda f: f(x.long(), zeros, ones), NotImplementedError,
                      "not implemented for 'Long'"),
        "bool-input": (lambda f: f(x > 0, zeros, ones), NotImplementedError,
                       "not implemented for 'Bool'"),
        "weight-size": (lambda f: f(x, zeros, ones, torch.ones(4, device=device)),
                        RuntimeError, "weight should contain 3 elements not 4"),
        "bias-size": (lambda f: f(x, zeros, ones, None, torch.ones(2, device=device)),
                      RuntimeError, "bias should contain 3 elements not 2"),
        "running-mean-size": (lambda f: f(x, torch.zeros(4, device=device), ones),
                              RuntimeError, "running_mean should contain 3 elements not 4"),
        "running-var-size": (lambda f: f(x, zeros, torch.ones(5, device=device)),
                             RuntimeError, "running_var should contain 3 elements not 5"),
        "eval-without-stats": (lambda f: f(x, None, None), RuntimeError,
                               "running_mean must be defined in evaluation mode"),
        "one-value-per-channel": (lambda f: f(torch.randn(1, 3, device=device), None, None,
                                              training=True),
                                  ValueError, "Expected more than 1 value per channel"),
        "eps-zero": (lambda f: f(x, None, None, training=True, eps=0.0), ValueError,
                     "batch_norm eps must be positive during training, but got 0.0"),
        "module-rank": (None, ValueError, r"expected 4D input \(got 3D input\)"),
        "mean-without-var": (lambda f: f(x, zeros, None, training=True), ValueError,
                             "running_mean and running_var must either both be None"),
        "var-without-mean": (lambda f: f(x, None, ones, training=True), ValueError,
                             "running_mean and running_var must either both be None"),
        "eval-eps-negative": (lambda f: f(x, zeros, ones, eps=-1.0), ValueError,
                              "batch_norm eps must be non-negative, but got -1.0"),
        "stats-requiring-grad": (lambda f: f(x, zeros.clone().requires_grad_(), ones,
                                             training=True),
                                 RuntimeError, "not differentiable with respect to argument "
                                 "'running_mean'"),
        "mixed-dtype": (lambda f: f(x.bfloat16(), zeros, ones,
                                    torch.ones(3, device=device, dtype=torch.float16)),
                        RuntimeError, "mixed dtype"),
    }
    call, exc, match = cases[case]
    if case == "module-rank":
        _raises(exc, match, lambda: torch.nn.BatchNorm2d(3)(x.cpu()))
        _raises(exc, match, lambda: fused_norm.BatchNorm2d(3).to(device)(x))
        return
    if device == "cpu":
        _raises(exc, match, lambda: call(F.batch_norm))  # the wording is torch's
    _raises(exc, match, lambda: call(fused_norm.batch_norm))


@pytest.mark.parametrize("op", ["batch_norm_bwd", "batch_norm_bwd_reduce", "batch_norm_bwd_elemt"])
def test_bad_grad_out(device, op):
    x = torch.randn(4, 3, 5, device=device)
    mean, var = torch.ops.fused_norm.batch_norm_stats(x)
    call = {
        "batch_norm_bwd": lambda dy: torch.ops.fused_norm.batch_norm_bwd(
            dy, x, mean, var, None, None, None, 1e-5, True, [True, False, False, False]),
        "batch_norm_bwd_reduce": lambda dy: torch.ops.fused_norm.batch_norm_bwd_reduce(
            dy, x, mean, None, False),
        "batch_norm_bwd_elemt": lambda dy: torch.ops.fused_norm.batch_norm_bwd_elemt(
            dy, x, mean, var, None, None, None, None, 1e-5, 1),
    }[op]
    _raises(RuntimeError, r"batch_norm: expected grad_out of shape \[4, 3, 5\], but got \[4, 3\]",
            lambda: call(torch.randn(4, 3, device=device)))
    _raises(RuntimeError, "batch_norm: expected grad_out of dtype Float, but got Double",
            lambda: call(torch.randn(4, 3, 5, device=device, dtype=torch.float64)))


def test_failed_call_leaves_running_stats(device):
    """Every check comes before the running statistics are updated."""
    x = torch.randn(4, 3, 5, device=device)
    rm, rv = torch.zeros(3, device=device), torch.ones(3, device=device)
    with pytest.raises(RuntimeError, match="weight should contain 3 elements not 4"):
        fused_norm.batch_norm(x, rm, rv, torch.ones(4, device=device), training=True)
    assert torch.equal(rm, torch.zeros_like(rm)) and torch.equal(rv, torch.ones_like(rv))


@requires_cuda
def test_mismatched_devices():
    x = torch.randn(4, 3, 5, device="cuda")
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        fused_norm.batch_norm(x, torch.zeros(3), torch.ones(3))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_misaligned_views(device, layout, dtype):
    """Tensors that start one element into their storage: no 16-byte alignment to lean on."""
    shape = (3, 8, 5, 8)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def shifted(t):
        flat = torch.empty(t.numel() + 1, device=device, dtype=dtype)
        view = flat[1:].view(t.permute(0, 2, 3, 1).shape if layout == "channels_last" else t.shape)
        view = view.permute(0, 3, 1, 2) if layout == "channels_last" else view
        view.copy_(t)
        assert view.data_ptr() % 16 != 0 and view.is_contiguous(memory_format=fmt)
        return view

    x = shifted(torch.randn(shape, device=device).to(dtype)).requires_grad_()
    residual = shifted(torch.randn(shape, device=device).to(dtype))
    w, b = make_params(8, dtype, device)
    y = fused_norm.batch_norm_add_relu(x, residual, None, None, w, b, True)
    y_ref, _, _ = ref_forward(x, None, None, w, b, True, residual=residual, relu=True)
    assert_close(y, y_ref, dtype, "fwd")
    grad_y = shifted(torch.randn(shape, device=device).to(dtype))
    (dx,) = torch.autograd.grad(y, x, grad_y)
    ref = ref_grads(x, w, b, grad_y, True, residual=residual, relu=True)
    pre = ref_forward(x, None, None, w, b, True, residual=residual)[0].double()
    clear = pre.abs() > 4 * torch.finfo(dtype).eps * (1 + pre.abs())
    assert_close(dx * clear, (ref[0] * clear).to(dtype), dtype, "bwd")


@requires_cuda
@pytest.mark.slow
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_more_than_2_pow_31_elements_cuda(layout):
    """64-bit indexing: 2^31 + 2^24 bf16 elements (4.3 GB per tensor)."""
    free, _ = torch.cuda.mem_get_info()
    if free < 24 * 2**30:
        pytest.skip("needs 24 GB of free GPU memory")
    C, HW = 4, 2**14
    N = (2**31 + 2**24) // (C * HW)
    x = torch.randn(N, C, HW, 1, device="cuda", dtype=torch.bfloat16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    mean, var = torch.ops.fused_norm.batch_norm_stats(x)
    xf = x.float()
    torch.testing.assert_close(mean, xf.mean((0, 2, 3)), atol=1e-3, rtol=0)
    torch.testing.assert_close(var, xf.var((0, 2, 3), unbiased=False), atol=0, rtol=1e-3)
    del xf
    y = torch.ops.fused_norm.batch_norm_elemt(x, mean, var, None, None, None, 1e-5, False)
    # The last elements are the ones a 32-bit index would miss.
    tail = (x[-1].float() - mean[:, None, None]) * torch.rsqrt(var[:, None, None] + 1e-5)
    torch.testing.assert_close(y[-1].float(), tail, atol=2e-2, rtol=2e-2)


def test_constructor_signatures_are_torchs_plus_options():
    """inspect.signature (help(), IDEs) of the modules whose __init__ passes *args on: torch's
    constructor's parameters, then our keyword-only options."""
    import inspect

    cases = {
        fused_norm.BatchNorm1d: (torch.nn.BatchNorm1d, ["relu"]),
        fused_norm.BatchNorm2d: (torch.nn.BatchNorm2d, ["relu"]),
        fused_norm.BatchNorm3d: (torch.nn.BatchNorm3d, ["relu"]),
        fused_norm.SyncBatchNorm: (torch.nn.SyncBatchNorm, ["relu"]),
        fused_norm.GroupNorm: (torch.nn.GroupNorm, ["activation"]),
        fused_norm.AddLayerNorm: (torch.nn.LayerNorm, ["alpha", "dropout_p", "prenorm",
                                                       "residual_in_fp32", "out_dtype",
                                                       "zero_centered_weight",
                                                       "memory_efficient"]),
        fused_norm.AddRMSNorm: (torch.nn.RMSNorm, ["alpha", "dropout_p", "prenorm",
                                                   "residual_in_fp32", "out_dtype",
                                                   "zero_centered_weight", "memory_efficient"]),
    }
    for ours, (theirs, options) in cases.items():
        params = list(inspect.signature(ours).parameters.values())
        base = list(inspect.signature(theirs).parameters.values())
        assert params[:len(base)] == base, ours
        assert [p.name for p in params[len(base):]] == options, ours
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params[len(base):])
