"""Kernel-level checks of the group-norm ops (torch.ops.fused_norm.group_norm_fwd / _bwd) with
their fused activations, against torch's group_norm + activation evaluated in float64 on the
upcast inputs (the Python layer on top is tested with the modules).

Shapes cover HW == 1, HW shorter than a vector, odd sizes, G == 1 and G == C, a batch of one
(rows cut into pieces across threads) and long rows."""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

import fused_norm  # noqa: F401  (registers the ops)
from conftest import assert_close

ACTIVATIONS = {
    "none": lambda z: z,
    "relu": F.relu,
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda z: F.gelu(z, approximate="tanh"),
    "mish": F.mish,
}

# (shape, num_groups)
SHAPES = [
    ((2, 6, 5), 3),
    ((3, 32, 7, 7), 8),
    ((1, 64, 16, 16), 1),
    ((4, 8, 1), 8),
    ((4, 8, 1), 2),
    ((2, 6, 5), 6),
    ((2, 4, 3, 37), 1),
]
DTYPES = [
    pytest.param(torch.float32, id="fp32"),
    pytest.param(torch.float64, id="fp64"),
    pytest.param(torch.float16, id="fp16"),
    pytest.param(torch.bfloat16, id="bf16"),
]


def make_inputs(shape, dtype, param_dtype=None, affine=True, offset=0.0):
    param_dtype = param_dtype or dtype
    C = shape[1]
    x = (torch.randn(shape, dtype=torch.float64) + offset).to(dtype)
    w = torch.randn(C, dtype=torch.float64).to(param_dtype) if affine else None
    b = torch.randn(C, dtype=torch.float64).to(param_dtype) if affine else None
    dy = torch.randn(shape, dtype=torch.float64).to(dtype)
    return x, w, b, dy


def reference(x, G, w, b, dy, act, eps=1e-5):
    """y, mean, rstd and the gradients of x, w, b in float64 (w, b grads None without affine)."""
    leaves = [t.detach().double().requires_grad_() for t in (x, w, b) if t is not None]
    x64 = leaves[0]
    w64, b64 = (leaves[1], leaves[2]) if w is not None else (None, None)
    y = ACTIVATIONS[act](F.group_norm(x64, G, w64, b64, eps))
    grads = torch.autograd.grad(y, leaves, dy.double())
    rows = x64.reshape(x.shape[0], G, -1)
    mean = rows.mean(-1)
    rstd = (rows.var(-1, unbiased=False) + eps).rsqrt()
    grads = list(grads) + [None] * (3 - len(grads))
    return y.detach(), mean, rstd, grads


def run_ops(x, G, w, b, dy, act, mask=(True, True, True), eps=1e-5):
    y, mean, rstd = torch.ops.fused_norm.group_norm_fwd(x, G, w, b, eps, act)
    grads = torch.ops.fused_norm.group_norm_bwd(dy, x, G, mean, rstd, w, b, act, list(mask))
    return y, mean, rstd, grads


def check_all(x, G, w, b, dy, act, mask=(True, True, True), msg=""):
    y, mean, rstd, (dx, dw, db) = run_ops(x, G, w, b, dy, act, mask)
    y_ref, mean_ref, rstd_ref, (dx_ref, dw_ref, db_ref) = reference(x, G, w, b, dy, act)
    stats_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    low_precision = x.dtype in (torch.float16, torch.bfloat16)
    # The statistics are exact for the (exactly upcast) input: the fp32 table bounds them.
    stats_tol_dtype = torch.float32 if low_precision else x.dtype
    assert_close(mean, mean_ref.to(stats_dtype), stats_tol_dtype, "fwd", msg=f"{msg} mean")
    assert_close(rstd, rstd_ref.to(stats_dtype), stats_tol_dtype, "fwd", msg=f"{msg} rstd")
    assert_close(y, y_ref.to(x.dtype), x.dtype, "fwd", msg=f"{msg} y")
    if mask[0]:
        assert_close(dx, dx_ref.to(x.dtype), x.dtype, "bwd", msg=f"{msg} dx")
    else:
        assert dx.numel() == 0
    rows = x.shape[0] * x[0, 0].numel()
    for want, got, ref, param, name in ((mask[1], dw, dw_ref, w, "dweight"),
                                        (mask[2], db, db_ref, b, "dbias")):
        if want and param is not None:
            assert_close(got, ref.to(param.dtype), x.dtype, "wgrad", rows=rows, msg=f"{msg} {name}")
        else:
            assert got.numel() == 0


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, G", SHAPES)
def test_parity(shape, G, dtype, act):
    x, w, b, dy = make_inputs(shape, dtype)
    check_all(x, G, w, b, dy, act, msg=f"{shape} G={G} {act}")


@pytest.mark.parametrize("act", ["none", "silu"])
@pytest.mark.parametrize("shape, G", SHAPES[:4])
def test_without_affine(shape, G, act):
    x, w, b, dy = make_inputs(shape, torch.float32, affine=False)
    check_all(x, G, None, None, dy, act, msg=f"{shape} G={G} {act}")


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_weight_only_and_bias_only(act):
    x, w, b, dy = make_inputs((2, 8, 9), torch.float32)
    y, *_ = run_ops(x, 4, w, None, dy, act)
    y_ref = ACTIVATIONS[act](F.group_norm(x.double(), 4, w.double(), None))
    assert_close(y, y_ref.float(), torch.float32, "fwd")
    y, mean, rstd, (dx, dw, db) = run_ops(x, 4, None, b, dy, act)
    x64 = x.double().requires_grad_()
    b64 = b.double().requires_grad_()
    y_ref = ACTIVATIONS[act](F.group_norm(x64, 4, None, b64))
    dx_ref, db_ref = torch.autograd.grad(y_ref, (x64, b64), dy.double())
    assert_close(y, y_ref.detach().float(), torch.float32, "fwd")
    assert_close(dx, dx_ref.float(), torch.float32, "bwd")
    assert_close(db, db_ref.float(), torch.float32, "wgrad", rows=18)
    assert dw.numel() == 0


@pytest.mark.parametrize("dtype", [pytest.param(torch.float16, id="fp16"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("act", ["none", "gelu"])
def test_mixed_dtype_fp32_params(dtype, act):
    x, w, b, dy = make_inputs((3, 12, 5, 5), dtype, param_dtype=torch.float32)
    check_all(x, 4, w, b, dy, act, msg=f"mixed {act}")


@pytest.mark.parametrize("mask", [(True, False, False), (False, True, False), (False, False, True),
                                  (False, True, True), (True, True, False)])
@pytest.mark.parametrize("act", ["relu", "mish"])
def test_output_mask(mask, act):
    x, w, b, dy = make_inputs((3, 16, 6, 6), torch.float32)
    check_all(x, 4, w, b, dy, act, mask=mask, msg=f"mask={mask} {act}")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.bfloat16, id="bf16")])
@pytest.mark.parametrize("act", ["none", "silu", "gelu_tanh"])
@pytest.mark.parametrize("shape, G", [((2, 4, 250001), 2), ((1, 4, 250001), 1)])
def test_long_rows(shape, G, dtype, act):
    x, w, b, dy = make_inputs(shape, dtype)
    check_all(x, G, w, b, dy, act, msg=f"{shape} G={G} {act}")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="fp32"),
                                   pytest.param(torch.float64, id="fp64")])
@pytest.mark.parametrize("act", list(ACTIVATIONS))
def test_large_offset(dtype, act):
    # Data far from zero: the shifted statistics and the x - mean form of z keep the precision.
    x, w, b, dy = make_inputs((2, 16, 9, 9), dtype, offset=100.0)
    check_all(x, 4, w, b, dy, act, msg=f"offset {act}")


def test_activation_edges_match_torch():
    # Large |z| (silu/mish saturation, mish's softplus threshold 20) and z == 0 (relu's gradient).
    C = 8
    x = torch.cat([torch.linspace(-60, 60, 240), torch.zeros(16)]).reshape(1, C, 32)
    w = torch.full((C,), 30.0)
    b = torch.zeros(C)
    dy = torch.randn_like(x)
    for act in ACTIVATIONS:
        check_all(x, C, w, b, dy, act, msg=f"edges {act}")


def test_nan_propagates():
    x, w, b, dy = make_inputs((2, 8, 10), torch.float32)
    x[0, 1, 3] = float("nan")
    for act in ACTIVATIONS:
        y, mean, rstd, (dx, dw, db) = run_ops(x, 4, w, b, dy, act)
        # The NaN poisons its group (sample 0, channels 0-1) and nothing else.
        assert torch.isnan(mean[0, 0]) and not torch.isnan(mean[0, 1:]).any()
        assert torch.isnan(y[0, :2]).all() and not torch.isnan(y[0, 2:]).any(), act
        assert not torch.isnan(y[1]).any() and not torch.isnan(dx[1]).any(), act


def test_backward_is_deterministic():
    x, w, b, dy = make_inputs((16, 64, 8, 8), torch.float32)
    first = run_ops(x, 8, w, b, dy, "silu")[3]
    for _ in range(3):
        again = run_ops(x, 8, w, b, dy, "silu")[3]
        for a, e in zip(again, first):
            assert torch.equal(a, e)


def test_zero_size():
    x = torch.randn(0, 8, 4)
    w, b = torch.randn(8), torch.randn(8)
    y, mean, rstd = torch.ops.fused_norm.group_norm_fwd(x, 4, w, b, 1e-5, "silu")
    assert y.shape == x.shape and mean.shape == (0, 4)
    dx, dw, db = torch.ops.fused_norm.group_norm_bwd(x, x, 4, mean, rstd, w, b, "silu",
                                                     [True, True, True])
    assert dx.shape == x.shape and torch.equal(dw, torch.zeros(8)) and torch.equal(db, dw)


def test_unknown_activation():
    x = torch.randn(2, 4, 3)
    with pytest.raises(ValueError, match="unknown activation 'tanh'"):
        torch.ops.fused_norm.group_norm_fwd(x, 2, None, None, 1e-5, "tanh")


# The narrower CPU kernel variants, each in a fresh process (FUSED_NORM_CPU_CAPABILITY picks one
# at load); the tests above run the best one.
CAPABILITY_CHECK = textwrap.dedent(
    """
    import torch
    import test_group_norm_ops as t

    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        # Partial chunks, HW == 1, a row cut into pieces.
        for shape, G in (((2, 6, 5), 3), ((3, 32, 7, 7), 8), ((4, 8, 1), 2), ((1, 4, 20001), 1)):
            x, w, b, dy = t.make_inputs(shape, dtype)
            for act in t.ACTIVATIONS:
                t.check_all(x, G, w, b, dy, act, msg=f"{shape} G={G} {act} {dtype}")
    """
)


@pytest.mark.parametrize("capability", ["default", "avx2"])
def test_cpu_capabilities(capability):
    env = dict(os.environ, FUSED_NORM_CPU_CAPABILITY=capability)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [tests_dir, env.get("PYTHONPATH")]))
    result = subprocess.run([sys.executable, "-c", CAPABILITY_CHECK], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
