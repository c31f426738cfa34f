"""GroupNorm (plain and with a fused activation) and InstanceNorm: parity with torch over dtypes,
shapes, groups and memory formats; modules; torch's own identities; autograd, opcheck, compile,
autocast and bad input.

The oracle is torch.nn.functional evaluated in float64 on the upcast inputs.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close, requires_cuda

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ACTIVATIONS = ["none", "relu", "silu", "gelu", "gelu_tanh", "mish"]
TORCH_ACT = {
    "none": lambda z: z, "relu": F.relu, "silu": F.silu, "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"), "mish": F.mish,
}

# (shape, groups, channels_last)
CASES = [
    pytest.param((2, 6, 5), 3, False, id="3d"),
    pytest.param((3, 8, 7, 7), 4, False, id="4d"),
    pytest.param((3, 8, 7, 7), 4, True, id="4d-channels-last"),
    # channels-last is a column problem per sample (csrc/cpu/group_norm_kernels.h): one sample
    # (all threads on it), channels not a whole number of vectors, one channel or all per group,
    # channels_last_3d
    pytest.param((1, 64, 33, 33), 32, True, id="channels-last-one-sample"),
    pytest.param((2, 40, 9, 9), 8, True, id="channels-last-odd-channels"),
    pytest.param((3, 6, 5, 4), 6, True, id="channels-last-groups-eq-channels"),
    pytest.param((2, 16, 9, 9), 1, True, id="channels-last-one-group"),
    pytest.param((2, 12, 3, 4, 5), 3, True, id="channels-last-3d"),
    pytest.param((2, 32, 16, 16), 32, False, id="groups-eq-channels"),
    pytest.param((2, 16, 9, 9), 1, False, id="one-group"),
    pytest.param((4, 8, 1), 2, False, id="hw1"),
    pytest.param((1, 4, 3, 4, 5), 2, False, id="5d"),
    pytest.param((2, 4, 65537), 2, False, id="long-rows"),
    # dweight/dbias sum the batch's per-sample sums in blocks of 256 samples (column_totals)
    pytest.param((300, 6, 2, 3), 3, False, id="batch-over-a-sum-block"),
]


def f64(t):
    return None if t is None else t.detach().double()


def make(shape, channels_last, dtype, device, offset=0.0):
    x = (torch.randn(shape, device=device) * 2 + offset).to(dtype)
    if channels_last:
        x = x.contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    return x


def make_params(C, dtype, device, affine):
    if affine == "none":
        return None, None
    w = (torch.rand(C, device=device) + 0.5).to(dtype)
    b = torch.randn(C, device=device).to(dtype) if affine == "weight_bias" else None
    return w, b


@pytest.mark.parametrize("shape,groups,channels_last", CASES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("affine", ["none", "weight", "weight_bias"])
def test_group_norm_parity(device, shape, groups, channels_last, dtype, affine):
    x = make(shape, channels_last, dtype, device).requires_grad_()
    w, b = make_params(shape[1], dtype, device, affine)
    leaves = [x] + [t.requires_grad_() for t in (w, b) if t is not None]
    y = fused_norm.group_norm(x, groups, w, b, 1e-5)
    ref_leaves = [f64(t).requires_grad_() for t in leaves]
    it = iter(ref_leaves[1:])
    w64 = next(it) if w is not None else None
    b64 = next(it) if b is not None else None
    y_ref = F.group_norm(ref_leaves[0], groups, w64, b64, 1e-5)
    assert_close(y, y_ref.to(dtype), dtype, "fwd")
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        assert y.is_contiguous(memory_format=fmt)
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, leaves, dy)
    ref = torch.autograd.grad(y_ref, ref_leaves, f64(dy))
    rows = shape[0] * (x.numel() // (shape[0] * shape[1]))
    assert_close(grads[0], ref[0].to(dtype), dtype, "bwd", msg="dx")
    for g, r in zip(grads[1:], ref[1:]):
        assert_close(g, r.to(dtype), dtype, "wgrad", rows, msg="dparam")


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("shape,groups", [((2, 16, 6, 5), 4), ((1, 24, 20, 21), 6)],
                         ids=["batch", "one-sample"])
def test_group_norm_act_parity(device, activation, dtype, channels_last, shape, groups):
    x = make(shape, channels_last, dtype, device).requires_grad_()
    C = shape[1]
    w, b = make_params(C, dtype, device, "weight_bias")
    w.requires_grad_()
    b.requires_grad_()
    y = fused_norm.group_norm_act(x, groups, w, b, 1e-5, activation)
    x64, w64, b64 = (f64(t).requires_grad_() for t in (x, w, b))
    z = F.group_norm(x64, groups, w64, b64, 1e-5)
    y_ref = TORCH_ACT[activation](z)
    assert_close(y, y_ref.to(dtype), dtype, "fwd")
    dy = torch.randn_like(y)
    grads = torch.autograd.grad(y, (x, w, b), dy)
    ref = torch.autograd.grad(y_ref, (x64, w64, b64), f64(dy))
    # ReLU's derivative jumps at 0: compare only where z is clearly away from it.
    clear = (z.detach().abs() > 1e-2) if activation == "relu" else torch.ones_like(z, dtype=torch.bool)
    assert_close(grads[0] * clear, (ref[0] * clear).to(dtype), dtype, "bwd", msg="dx")
    rows = x.numel() // C
    if activation != "relu":
        assert_close(grads[1], ref[1].to(dtype), dtype, "wgrad", rows, msg="dweight")
        assert_close(grads[2], ref[2].to(dtype), dtype, "wgrad", rows, msg="dbias")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_input_with_float_params(device, dtype):
    x = make((2, 8, 4, 4), False, dtype, device).requires_grad_()
    w = (torch.rand(8, device=device) + 0.5).requires_grad_()
    b = torch.randn(8, device=device).requires_grad_()
    y = fused_norm.group_norm_act(x, 2, w, b, 1e-5, "silu")
    assert y.dtype == dtype
    y_ref = F.silu(F.group_norm(f64(x), 2, f64(w), f64(b)))
    assert_close(y, y_ref.to(dtype), dtype, "fwd")
    dx, dw, db = torch.autograd.grad(y, (x, w, b), torch.ones_like(y))
    assert dw.dtype == torch.float32 and db.dtype == torch.float32 and dx.dtype == dtype


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_statistics_keep_precision_far_from_zero(device, channels_last):
    x = make((4, 8, 64, 64), channels_last, torch.float32, device, offset=1000.0)
    y = fused_norm.group_norm(x, 4)
    y_ref = F.group_norm(x.double(), 4)
    torch.testing.assert_close(y, y_ref.float(), atol=2e-3, rtol=0)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_deterministic_and_nan_propagation(device, channels_last):
    x = make((4, 16, 12, 12), channels_last, torch.float32, device).requires_grad_()
    w = torch.rand(16, device=device, requires_grad=True)
    b = torch.randn(16, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    runs = []
    for _ in range(2):
        y = fused_norm.group_norm_act(x, 4, w, b, 1e-5, "silu")
        runs.append([y, *torch.autograd.grad(y, (x, w, b), dy)])
    for a, c in zip(*runs):
        assert torch.equal(a, c)
    xn = x.detach().clone()
    xn[1, 5, 3, 3] = float("nan")
    # dy in another memory order than x is brought to x's.
    dx = torch.autograd.grad(fused_norm.group_norm(x, 4), x, dy.contiguous())[0]
    dx_other = torch.autograd.grad(
        fused_norm.group_norm(x, 4), x, dy.contiguous(memory_format=torch.channels_last))[0]
    torch.testing.assert_close(dx, dx_other, atol=0, rtol=0)
    torch.testing.assert_close(fused_norm.group_norm(xn, 4), F.group_norm(xn, 4), equal_nan=True)


# --------------------------------------------------------------------------------------------
# torch's identities and InstanceNorm
# --------------------------------------------------------------------------------------------


def test_identities(device):
    x = make((3, 6, 5, 4), False, torch.float64, device)
    # groups == channels is InstanceNorm; one group is LayerNorm over (C, *).
    torch.testing.assert_close(fused_norm.group_norm(x, 6), F.instance_norm(x))
    torch.testing.assert_close(fused_norm.group_norm(x, 6), fused_norm.instance_norm(x))
    torch.testing.assert_close(fused_norm.group_norm(x, 1), F.layer_norm(x, x.shape[1:]))


@pytest.mark.parametrize("name,shape", [
    ("InstanceNorm1d", (4, 3, 9)), ("InstanceNorm1d", (3, 9)), ("InstanceNorm2d", (2, 3, 5, 6)),
    ("InstanceNorm2d", (3, 5, 6)), ("InstanceNorm3d", (2, 3, 3, 4, 5)),
], ids=["1d", "1d-unbatched", "2d", "2d-unbatched", "3d"])
@pytest.mark.parametrize("options", [
    {}, {"affine": True}, {"track_running_stats": True},
    {"affine": True, "track_running_stats": True, "momentum": None},
], ids=["default", "affine", "running", "affine-running-cumulative"])
def test_instance_norm_modules_match_torch(device, name, shape, options):
    ours = getattr(fused_norm, name)(3, **options).to(device)
    theirs = getattr(torch.nn, name)(3, **options).to(device)
    assert isinstance(ours, getattr(torch.nn, name))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    if ours.weight is not None:
        with torch.no_grad():
            for m in (ours, theirs):
                m.weight.copy_(torch.tensor([0.5, 1.0, 2.0]))
                m.bias.copy_(torch.tensor([0.1, -0.2, 0.3]))
    for step in range(2):
        x = torch.randn(shape, device=device) * (step + 1) + step
        xo, xt = x.clone().requires_grad_(), x.clone().requires_grad_()
        yo, yt = ours(xo), theirs(xt)
        torch.testing.assert_close(yo, yt)
        yo.sum().backward()
        yt.sum().backward()
        torch.testing.assert_close(xo.grad, xt.grad, atol=1e-5, rtol=1e-5)
    for a, b in zip(ours.state_dict().values(), theirs.state_dict().values()):
        torch.testing.assert_close(a, b)
    ours.eval()
    theirs.eval()
    x = torch.randn(shape, device=device)
    torch.testing.assert_close(ours(x), theirs(x))


def test_instance_norm_functional_use_running_stats(device):
    x = torch.randn(2, 3, 8, device=device)
    rm, rv = torch.randn(3, device=device), torch.rand(3, device=device) + 0.5
    w, b = torch.rand(3, device=device), torch.randn(3, device=device)
    torch.testing.assert_close(
        fused_norm.instance_norm(x, rm, rv, w, b, use_input_stats=False),
        F.instance_norm(x, rm, rv, w, b, use_input_stats=False))


@pytest.mark.parametrize("eps", [1e-5, 0.5, 1.0])
def test_instance_norm_running_var_keeps_its_digits(device, eps):
    """The running variance is the instances' unbiased variance as torch's, whatever eps: a
    constant instance adds exactly 0, and a variance far below eps is not lost to it."""
    x = torch.cat([torch.full((2, 1, 64), 3.0, device=device),
                   torch.randn(2, 1, 64, device=device) * 1e-3,
                   torch.randn(2, 1, 64, device=device) * 5 + 2], dim=1)
    ours = fused_norm.InstanceNorm1d(3, eps=eps, momentum=1.0, track_running_stats=True)
    theirs = torch.nn.InstanceNorm1d(3, eps=eps, momentum=1.0, track_running_stats=True)
    ours, theirs = ours.to(device), theirs.to(device)
    # (The constant instance's output, 0, comes out as x * scale + shift, of the order of an
    # ulp of x * rstd.)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-4, rtol=1e-5)
    assert ours.running_var[0] == 0
    torch.testing.assert_close(ours.running_var, theirs.running_var, rtol=1e-5, atol=0)
    torch.testing.assert_close(ours.running_mean, theirs.running_mean)


def test_instance_norm_running_stats_checks_as_torch(device):
    x = torch.randn(2, 3, 8, device=device)
    stat = torch.zeros(3, device=device)
    for mean, var in ((stat, None), (None, stat)):
        for f in (F.instance_norm, fused_norm.instance_norm):
            with pytest.raises(ValueError, match="must either both be None or neither"):
                f(x, mean, var)


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "channels_last_3d", "transposed"])
def test_instance_norm_output_is_contiguous(device, layout, use_input_stats):
    # torch's instance_norm normalizes input.contiguous(): its output is contiguous whatever the
    # input's layout (GroupNorm and BatchNorm keep channels_last).
    if layout == "transposed":
        x = torch.randn(2, 3, 6, 5, device=device).transpose(2, 3)
    else:
        shape = (2, 3, 4, 5) if layout == "channels_last" else (2, 3, 4, 5, 2)
        x = torch.randn(shape, device=device).contiguous(memory_format=getattr(torch, layout))
    stats = (torch.randn(3, device=device), torch.rand(3, device=device) + 0.5)
    w, b = torch.rand(3, device=device), torch.randn(3, device=device)
    y = fused_norm.instance_norm(x, *stats, w, b, use_input_stats=use_input_stats)
    y_ref = F.instance_norm(x, *stats, w, b, use_input_stats=use_input_stats)
    torch.testing.assert_close(y, y_ref)
    assert y.stride() == y_ref.stride() and y.is_contiguous()


@pytest.mark.parametrize("use_input_stats", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_instance_norm_without_spatial_elements(device, use_input_stats, dtype):
    # torch gives an empty output, zero weight and bias gradients and unchanged running stats
    # (GroupNorm refuses such an input).
    results = []
    for module in (fused_norm, F):
        x = torch.randn(2, 3, 0, device=device, dtype=dtype, requires_grad=True)
        stats = [torch.full((3,), 0.5, device=device), torch.full((3,), 2.0, device=device)]
        w = torch.randn(3, device=device, requires_grad=True)
        b = torch.randn(3, device=device, requires_grad=True)
        y = module.instance_norm(x, *stats, w, b, use_input_stats=use_input_stats)
        y.float().sum().backward()
        results.append((y, x.grad, w.grad, b.grad, *stats))
    ours, theirs = results
    assert ours[0].shape == theirs[0].shape and ours[0].dtype == theirs[0].dtype == dtype
    for a, b in zip(ours[1:], theirs[1:]):
        torch.testing.assert_close(a, b)


def test_instance_norm_of_an_empty_batch(device):
    # torch averages the per-instance statistics over no instances: its running stats become
    # NaN. (Its backward then fails; ours gives empty and zero gradients.)
    for module in (fused_norm, F):
        stats = [torch.zeros(3, device=device), torch.ones(3, device=device)]
        y = module.instance_norm(torch.randn(0, 3, 4, device=device), *stats)
        assert y.shape == (0, 3, 4)
        assert all(stat.isnan().all() for stat in stats)
    x = torch.randn(0, 3, 4, device=device, requires_grad=True)
    w = torch.randn(3, device=device, requires_grad=True)
    fused_norm.instance_norm(x, weight=w).sum().backward()
    assert x.grad.shape == x.shape
    torch.testing.assert_close(w.grad, torch.zeros_like(w))


def test_group_norm_module(device):
    ours = fused_norm.GroupNorm(4, 8, activation="swish").to(device)
    theirs = torch.nn.GroupNorm(4, 8).to(device)
    assert isinstance(ours, torch.nn.GroupNorm) and ours.activation == "silu"
    assert list(ours.state_dict()) == list(theirs.state_dict())
    x = torch.randn(2, 8, 5, 5, device=device)
    torch.testing.assert_close(ours(x), F.silu(theirs(x)))
    plain = fused_norm.GroupNorm(4, 8, affine=False).to(device)
    torch.testing.assert_close(plain(x), F.group_norm(x, 4))
    assert "activation='silu'" in repr(ours) and "activation" not in repr(plain)


# --------------------------------------------------------------------------------------------
# Autograd, opcheck, compile, autocast
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("activation", ["none", "silu", "gelu", "gelu_tanh", "mish"])
def test_gradcheck_and_gradgradcheck(device, activation):
    x = torch.randn(2, 4, 3, 2, device=device, dtype=torch.float64, requires_grad=True)
    w = (torch.rand(4, device=device, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(4, device=device, dtype=torch.float64, requires_grad=True)

    def fn(x, w, b):
        return fused_norm.group_norm_act(x, 2, w, b, 1e-5, activation)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


def test_instance_norm_gradgradcheck(device):
    x = torch.randn(2, 3, 5, device=device, dtype=torch.float64, requires_grad=True)
    w = torch.rand(3, device=device, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda x, w: fused_norm.instance_norm(x, weight=w), (x, w))


def test_opcheck(device):
    ops = torch.ops.fused_norm
    for channels_last in (False, True):
        for dtype, pdtype in ((torch.float32, torch.float32), (torch.bfloat16, torch.float32)):
            x = make((2, 8, 3, 4), channels_last, dtype, device)
            w, b = make_params(8, pdtype, device, "weight_bias")
            y, mean, rstd = ops.group_norm_fwd(x, 4, w, b, 1e-5, "silu")
            dy = torch.randn_like(y)
            torch.library.opcheck(ops.group_norm_fwd, (x, 4, w, b, 1e-5, "silu"))
            torch.library.opcheck(ops.group_norm_fwd, (x, 2, None, None, 1e-3, "none"))
            torch.library.opcheck(ops.group_norm_bwd,
                                  (dy, x, 4, mean, rstd, w, b, "silu", [True, True, True]))
            torch.library.opcheck(ops.group_norm_bwd,
                                  (dy, x, 4, mean, rstd, w, b, "gelu", [True, False, True]))


@pytest.mark.parametrize("module", ["group_norm_silu", "instance_norm"])
def test_compile_fullgraph(device, module):
    torch._dynamo.reset()
    if module == "group_norm_silu":
        ours = fused_norm.GroupNorm(4, 8, activation="silu").to(device)
    else:
        ours = fused_norm.InstanceNorm2d(8, affine=True, track_running_stats=True).to(device)
    eager = copy.deepcopy(ours)
    compiled = torch.compile(ours, fullgraph=True)
    x = torch.randn(2, 8, 6, 6, device=device)
    outs = []
    for model in (compiled, eager):
        xi = x.clone().requires_grad_()
        y = model(xi)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), xi.grad, model.weight.grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b)


def test_autocast_dtypes_match_torch(device):
    dtype = torch.bfloat16
    x = torch.randn(2, 8, 4, 4, device=device)
    gn, gn_ref = fused_norm.GroupNorm(2, 8).to(device), torch.nn.GroupNorm(2, 8).to(device)
    inn, inn_ref = (fused_norm.InstanceNorm2d(8, affine=True).to(device),
                    torch.nn.InstanceNorm2d(8, affine=True).to(device))
    with torch.autocast(device_type=device, dtype=dtype):
        for inp in (x, x.to(dtype)):
            assert gn(inp).dtype == gn_ref(inp).dtype
            assert inn(inp).dtype == inn_ref(inp).dtype


# --------------------------------------------------------------------------------------------
# Zero-size and bad input
# --------------------------------------------------------------------------------------------


def test_zero_size(device):
    x = torch.randn(0, 6, 3, device=device, requires_grad=True)
    y = fused_norm.group_norm(x, 3)
    assert y.shape == (0, 6, 3)
    y.sum().backward()
    with pytest.raises(RuntimeError, match="Expected HxW to be greater than 0, got 0"):
        fused_norm.group_norm(torch.randn(2, 6, 0, device=device), 3)


@pytest.mark.parametrize("case", [
    "rank", "divisible", "weight-shape", "bias-shape", "int-input", "groups-negative",
    "groups-zero", "groups-float", "groups-bool", "groups-tensor", "no-channels",
    "no-channels-empty-batch", "one-value", "mixed-dtype", "spatial-one", "running-size",
    "unknown-activation",
])
def test_bad_input(device, case):
    x = torch.randn(2, 6, 3, device=device)
    cases = {
        "rank": (lambda m: m.group_norm(torch.randn(4, device=device), 2), RuntimeError,
                 "Expected at least 2 dimensions for input tensor but received 1"),
        "divisible": (lambda m: m.group_norm(torch.randn(2, 5, 3, device=device), 2),
                      RuntimeError, "Expected number of channels in input to be divisible"),
        "weight-shape": (lambda m: m.group_norm(x, 2, torch.ones(4, device=device)), RuntimeError,
                         "Expected weight to be a vector of size equal to the number of channels"),
        "bias-shape": (lambda m: m.group_norm(x, 2, None, torch.ones(4, device=device)),
                       RuntimeError,
                       "Expected bias to be a vector of size equal to the number of channels"),
        "int-input": (lambda m: m.group_norm(x.long(), 2), NotImplementedError,
                      "not implemented for 'Long'"),
        "groups-negative": (lambda m: m.group_norm(x, -1), RuntimeError,
                            "Expected num groups to be greater than 0, got -1"),
        # torch's Python check divides by num_groups first.
        "groups-zero": (lambda m: m.group_norm(x, 0), ZeroDivisionError,
                        "integer division or modulo by zero"),
        "groups-float": (lambda m: m.group_norm(x, 2.0), TypeError,
                         r"group_norm\(\): argument 'num_groups' \(position 2\) must be int, "
                         "not float"),
        "groups-bool": (lambda m: m.group_norm(x, True), TypeError,
                        "argument 'num_groups' .* must be int, not bool"),
        "groups-tensor": (lambda m: m.group_norm(x, torch.tensor([2])), TypeError,
                          "argument 'num_groups' .* must be int, not Tensor"),
        "no-channels": (lambda m: m.group_norm(torch.randn(2, 0, 3, device=device), 1),
                        RuntimeError, "Expected number of channels to be greater than 0, got 0"),
        "no-channels-empty-batch": (lambda m: m.group_norm(torch.randn(0, 0, 3, device=device),
                                                           1),
                                    RuntimeError, "Expected number of channels to be greater"),
        "one-value": (lambda m: m.group_norm(torch.randn(1, 2, 1, device=device), 2), ValueError,
                      "Expected more than 1 value per channel when training"),
        "mixed-dtype": (lambda m: m.group_norm(x.bfloat16(), 2,
                                               torch.ones(6, device=device, dtype=torch.float16)),
                        RuntimeError, "mixed dtype"),
        "spatial-one": (lambda m: m.instance_norm(torch.randn(2, 3, 1, device=device)),
                        ValueError, "Expected more than 1 spatial element when training"),
        "running-size": (lambda m: m.instance_norm(torch.randn(2, 3, 4, device=device),
                                                   torch.zeros(4, device=device),
                                                   torch.ones(3, device=device)),
                         RuntimeError, "running_mean should contain 6 elements not 8"),
    }
    if case == "unknown-activation":
        with pytest.raises(ValueError, match="activation must be one of"):
            fused_norm.group_norm_act(x, 2, activation="tanh")
        with pytest.raises(ValueError, match="unknown activation"):
            torch.ops.fused_norm.group_norm_fwd(x, 2, None, None, 1e-5, "tanh")
        return
    call, exc, match = cases[case]
    if device == "cpu":
        with pytest.raises(exc, match=match):
            call(F)  # the wording is torch's
    with pytest.raises(exc, match=match):
        call(fused_norm)


def test_integer_num_groups_as_torch(device):
    """num_groups as torch's parser takes an int: a numpy integer or a 0-dim integer tensor."""
    x = torch.randn(2, 6, 3, device=device)
    for groups in (np.int64(3), torch.tensor(3)):
        torch.testing.assert_close(fused_norm.group_norm(x, groups), F.group_norm(x, 3))


def test_instance_norm_without_channels(device):
    # No channels, whatever the batch: torch's empty output (GroupNorm refuses C = 0).
    for n in (0, 2):
        x = torch.randn(n, 0, 5, device=device, requires_grad=True)
        y = fused_norm.instance_norm(x)
        assert y.shape == F.instance_norm(x.detach()).shape == (n, 0, 5)
        y.sum().backward()
        assert x.grad.shape == x.shape


def test_instance_norm_module_checks(device):
    with pytest.raises(ValueError, match="expected 3D or 4D input"):
        fused_norm.InstanceNorm2d(3).to(device)(torch.randn(3, 4, device=device))
    with pytest.raises(ValueError, match="to match num_features"):
        fused_norm.InstanceNorm1d(3, affine=True).to(device)(torch.randn(2, 4, 5, device=device))


@requires_cuda
def test_mismatched_devices():
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        fused_norm.group_norm(torch.randn(2, 4, 3, device="cuda"), 2, torch.ones(4))
