"""fused_norm::contiguous_copy, the copy that makes a permuted input contiguous (a blocked
transpose on CPU for channels-last and NHWC layouts; LayerNorm, RMSNorm, InstanceNorm and RReLU
use it where torch's functions copy their input): equal to torch's Tensor.contiguous() for every
dtype, shape and layout, never an alias of its input, gradient passed through, opcheck and
torch.compile; each CPU variant in a fresh process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close
from fused_norm import _ops

ops = torch.ops.fused_norm

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.uint8, torch.int16,
          torch.int32, torch.int64, torch.bool, torch.complex64]

# (shape, memory format): tiles cut at odd sizes on both sides of the transpose (rows = H * W,
# cols = C), whole 32 x 32 tiles, sides under 16 and layouts that are not channels-last
# (torch's copy).
LAYOUTS = [
    ((2, 37, 5, 7), torch.channels_last),
    ((3, 3, 61, 29), torch.channels_last),
    ((3, 40, 61, 29), torch.channels_last),
    ((2, 64, 32, 32), torch.channels_last),
    ((1, 200, 1, 3), torch.channels_last),
    ((4, 5, 1, 1), torch.channels_last),
    ((2, 33, 3, 4, 5), torch.channels_last_3d),
    ((0, 6, 4, 4), torch.channels_last),
    ((2, 6, 4, 0), torch.channels_last),
    ((2, 1, 4, 4), torch.channels_last),
    ((2, 6, 4, 5), torch.contiguous_format),
    ((3, 4, 5), torch.contiguous_format),
]


def _make(shape, fmt, dtype, device):
    x = (torch.randn(shape, device=device) * 50).to(dtype)
    return x.contiguous(memory_format=fmt)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,fmt", LAYOUTS, ids=lambda v: str(v))
def test_equals_torch_contiguous(device, dtype, shape, fmt):
    x = _make(shape, fmt, dtype, device)
    y = ops.contiguous_copy(x)
    expected = x.contiguous()
    assert y.is_contiguous() and y.dtype == dtype and y.shape == x.shape
    assert torch.equal(y, expected)
    assert y.numel() == 0 or y.data_ptr() != x.data_ptr()


# Permuted views of contiguous memory: batched transposes (NHWC views of NCHW, as ConvNeXt's
# LayerNorm input; matrices; size-1 dims anywhere) and other permutations (torch's copy).
VIEWS = {
    "nhwc": lambda x: x.permute(0, 2, 3, 1),
    "ndhwc": lambda x: x.reshape(2, 40, 2, 3, 8).permute(0, 2, 3, 4, 1),
    "matrix": lambda x: x.reshape(60, 64).t(),
    "batched-matrix": lambda x: x.reshape(2, 40, 48).transpose(1, 2),
    "rotate-two": lambda x: x.reshape(2, 20, 2, 48).permute(0, 3, 1, 2),
    "size-1": lambda x: x.reshape(1, 48, 1, 80).permute(2, 0, 3, 1),
    "narrow": lambda x: x.reshape(2, 3, 640).transpose(1, 2),  # under 16 wide: torch's copy
    "two-swaps": lambda x: x.transpose(1, 3),
    "reversed": lambda x: x.permute(3, 2, 1, 0),
}


@pytest.mark.parametrize("view", VIEWS, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64, torch.int8],
                         ids=str)
def test_permuted_views(device, view, dtype):
    x = VIEWS[view]((torch.randn(2, 40, 6, 8, device=device) * 50).to(dtype))
    assert not x.is_contiguous()
    assert torch.equal(ops.contiguous_copy(x), x.contiguous())


def test_strided_inputs(device):
    # Not dense (sliced): torch's copy, same values.
    x = torch.randn(4, 8, 6, 10, device=device)
    for view in (x[:, ::2], x[..., 1:9], x.permute(0, 2, 3, 1)[:, :3], x.expand(2, 4, 8, 6, 10)):
        assert torch.equal(ops.contiguous_copy(view), view.contiguous())
    # A channels-last view at a storage offset.
    base = torch.randn(3, 4, 5, 6, device=device).contiguous(memory_format=torch.channels_last)
    view = base[1:]
    assert view.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(ops.contiguous_copy(view), view.contiguous())


def test_special_values_move_as_bits(device):
    x = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf"), 1e-40, 3.0] * 8,
                     device=device).reshape(1, 6, 2, 4)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        cl = x.to(dtype).contiguous(memory_format=torch.channels_last)
        y = ops.contiguous_copy(cl)
        bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[y.element_size()]
        assert torch.equal(y.view(bits), cl.contiguous().view(bits))


def test_autograd_opcheck_compile(device):
    x = torch.randn(2, 5, 3, 4, device=device, dtype=torch.float64)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(ops.contiguous_copy, (x,))
    assert torch.autograd.gradgradcheck(ops.contiguous_copy, (x,))
    torch.library.opcheck(ops.contiguous_copy, (x,))
    torch.library.opcheck(ops.contiguous_copy, (x.detach().float(),))
    compiled = torch.compile(lambda t: _ops.contiguous(t) * 2, fullgraph=True)
    torch.testing.assert_close(compiled(x), x.contiguous() * 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_row_norms_of_nhwc_views(device, dtype):
    # ConvNeXt: LayerNorm over the channels of x.permute(0, 2, 3, 1), x channels-first.
    x = torch.randn(2, 48, 7, 9, device=device, dtype=dtype).requires_grad_()
    w = torch.randn(48, device=device, dtype=dtype, requires_grad=True)
    dy = torch.randn(2, 7, 9, 48, device=device, dtype=dtype)
    for ours, theirs in ((fused_norm.layer_norm, F.layer_norm), (fused_norm.rms_norm, F.rms_norm)):
        y, expected = (f(x.permute(0, 2, 3, 1), (48,), w) for f in (ours, theirs))
        assert y.stride() == expected.stride()
        assert_close(y, expected, dtype, "fwd")
        (dx, dw), (dx_want, dw_want) = (torch.autograd.grad(t, (x, w), dy) for t in (y, expected))
        assert_close(dx, dx_want, dtype, "bwd")
        assert_close(dw, dw_want, dtype, "wgrad", rows=2 * 7 * 9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_instance_norm_and_rrelu_on_channels_last(device, dtype):
    # The users of the copy: output contiguous as torch's, values and gradients torch's.
    x = torch.randn(3, 40, 6, 7, device=device, dtype=dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    dy = torch.randn(3, 40, 6, 7, device=device, dtype=dtype)
    tol = dict(atol=2e-2, rtol=2e-2) if dtype == torch.bfloat16 else {}
    for ours, theirs in ((fused_norm.instance_norm, F.instance_norm),
                         (lambda t: fused_norm.rrelu(t, 0.2, 0.2, training=True),
                          lambda t: F.rrelu(t, 0.2, 0.2, training=True)),
                         (fused_norm.rrelu, F.rrelu)):
        y, expected = ours(x), theirs(x)
        assert y.stride() == expected.stride()
        torch.testing.assert_close(y, expected, **tol)
        (dx,), (dx_expected,) = (torch.autograd.grad(t, x, dy) for t in (y, expected))
        torch.testing.assert_close(dx, dx_expected, **tol)


CAPABILITY_CHECK = """
import torch
for dtype in (torch.float32, torch.float64, torch.bfloat16, torch.float16, torch.uint8):
    for shape, fmt in (((2, 37, 5, 7), torch.channels_last), ((2, 64, 32, 32), torch.channels_last),
                       ((3, 33, 3, 4, 5), torch.channels_last_3d), ((1, 3, 70, 70), torch.channels_last)):
        x = (torch.randn(shape) * 50).to(dtype).contiguous(memory_format=fmt)
        for view in (x, x.permute(0, 2, 3, 1) if x.dim() == 4 else x.permute(0, 2, 3, 4, 1)):
            got = torch.ops.fused_norm.contiguous_copy(view)
            assert torch.equal(got, view.contiguous()), (dtype, shape)
print("ok")
"""


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_cpu_capability_variants(capability):
    env = dict(os.environ, FUSED_NORM_CPU_CAPABILITY=capability)
    result = subprocess.run([sys.executable, "-c", "import fused_norm\n" + CAPABILITY_CHECK],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
