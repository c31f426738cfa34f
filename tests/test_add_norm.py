"""Fused residual add + norm (add_layer_norm, add_rms_norm, AddLayerNorm, AddRMSNorm): against
the unfused composition in torch, gradients, dropout, DeepNorm's alpha, the residual stream's
dtype, zero-centered weight, the memory-efficient mode, opcheck, compile and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from fused_norm.reference import add_norm_ref, stats_dtype
from conftest import assert_close, requires_cuda, tol

ops = torch.ops.fused_norm

NORMS = ["layer_norm", "rms_norm"]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def fused(norm, x, residual, ns, weight=None, bias=None, eps=1e-5, **kw):
    if norm == "layer_norm":
        return fused_norm.add_layer_norm(x, residual, ns, weight, bias, eps, **kw)
    assert bias is None
    return fused_norm.add_rms_norm(x, residual, ns, weight, eps, **kw)


def composition(norm, x, residual, ns, weight=None, bias=None, eps=1e-5, alpha=1.0, mult=None,
                residual_dtype=None, out_dtype=None, zero_centered=False):
    """The unfused computation in plain torch (differentiable, fused_norm.reference): h in
    opmath (mult: the dropout's scaled mask), rounded to the residual stream's dtype; the norm in
    opmath; y rounded to out_dtype."""
    dropout = None if mult is None else (lambda v: v * mult.to(v.dtype))
    return add_norm_ref(x, residual, ns, weight, bias, eps, norm == "rms_norm", alpha, dropout,
                        residual_dtype, out_dtype, zero_centered)


def make(shape, dtype, device, requires_grad=False, scale=1.0):
    t = (torch.randn(shape, dtype=torch.float64) * scale).to(dtype).to(device)
    return t.requires_grad_(requires_grad)


def params(norm, n, dtype, device, requires_grad=False):
    # Weights in [0.5, 1.5]: the memory-efficient mode divides by them.
    w = (torch.rand(n, dtype=torch.float64) + 0.5).to(dtype).to(device).requires_grad_(requires_grad)
    b = make((n,), dtype, device, requires_grad) if norm == "layer_norm" else None
    return w, b


# ---------------------------------------------------------------------------------------------
# Forward parity


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 7), (4, 64), (2, 3, 100), (5, 1031), (2, 8192)])
def test_forward_matches_composition(device, norm, dtype, shape):
    x = make(shape, dtype, device)
    r = make(shape, dtype, device)
    w, b = params(norm, shape[-1], dtype, device)
    ns = shape[-1:]
    y, h = fused(norm, x, r, ns, w, b, prenorm=True)
    y_ref, h_ref = composition(norm, x, r, ns, w, b)
    assert_close(h, h_ref, dtype, "fwd", msg="h")
    assert_close(y, y_ref, dtype, "fwd", msg="y")
    # The unfused composition as users write it, in the input's dtype.
    torch_y = (F.layer_norm(x + r, ns, w, b, 1e-5) if norm == "layer_norm"
               else F.rms_norm(x + r, ns, w, 1e-5))
    assert_close(y, torch_y, dtype, "fwd", msg="torch composition")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.7])
@pytest.mark.parametrize("affine", [True, False])
def test_deepnorm_alpha_and_affine(device, norm, alpha, affine):
    x, r = make((6, 48), torch.float32, device), make((6, 48), torch.float32, device)
    w, b = params(norm, 48, torch.float32, device) if affine else (None, None)
    y = fused(norm, x, r, (48,), w, b, alpha=alpha)
    y_ref, _ = composition(norm, x, r, (48,), w, b, alpha=alpha)
    assert_close(y, y_ref, torch.float32, "fwd")


@pytest.mark.parametrize("norm", NORMS)
def test_no_residual_is_the_plain_norm(device, norm):
    x = make((5, 33), torch.float32, device)
    w, b = params(norm, 33, torch.float32, device)
    y, h = fused(norm, x, None, (33,), w, b, prenorm=True)
    assert torch.equal(h, x)
    ref = (fused_norm.layer_norm(x, (33,), w, b) if norm == "layer_norm"
           else fused_norm.rms_norm(x, (33,), w, 1e-5))
    assert_close(y, ref, torch.float32, "fwd")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_residual_in_fp32_and_out_dtype(device, norm, dtype):
    x, r = make((4, 40), dtype, device), make((4, 40), dtype, device)
    w, b = params(norm, 40, torch.float32, device)
    y, h = fused(norm, x, r, (40,), w, b, prenorm=True, residual_in_fp32=True)
    assert h.dtype == torch.float32 and y.dtype == dtype
    y_ref, h_ref = composition(norm, x, r, (40,), w, b, residual_dtype=torch.float32)
    assert_close(h, h_ref, torch.float32, "fwd", msg="h")
    assert_close(y, y_ref, dtype, "fwd", msg="y")
    # An fp32 residual stream carried between blocks, a 16-bit sublayer output.
    y2, h2 = fused(norm, x, h, (40,), w, b, prenorm=True)
    assert h2.dtype == torch.float32
    y_ref2, h_ref2 = composition(norm, x, h, (40,), w, b)
    assert_close(h2, h_ref2, torch.float32, "fwd", msg="h2")
    assert_close(y2, y_ref2, dtype, "fwd", msg="y2")
    # y in float32 from a 16-bit input.
    y3 = fused(norm, x, r, (40,), w, b, out_dtype=torch.float32)
    assert y3.dtype == torch.float32
    y_ref3, _ = composition(norm, x, r, (40,), w, b, out_dtype=torch.float32)
    assert_close(y3, y_ref3, torch.float32, "fwd", msg="out_dtype")


@pytest.mark.parametrize("norm", NORMS)
def test_zero_centered_weight(device, norm):
    x, r = make((3, 24), torch.float32, device), make((3, 24), torch.float32, device)
    w, b = params(norm, 24, torch.float32, device)
    y = fused(norm, x, r, (24,), w, b, zero_centered_weight=True)
    y_ref, _ = composition(norm, x, r, (24,), w, b, zero_centered=True)
    assert_close(y, y_ref, torch.float32, "fwd")


@pytest.mark.parametrize("norm", NORMS)
def test_non_contiguous_inputs(device, norm):
    x = make((8, 70), torch.float32, device)[:, 3:67]
    r = make((64, 8), torch.float32, device).t()
    w, b = params(norm, 64, torch.float32, device)
    y, h = fused(norm, x, r, (64,), w, b, prenorm=True)
    y_ref, h_ref = composition(norm, x, r, (64,), w, b)
    assert_close(h, h_ref, torch.float32, "fwd")
    assert_close(y, y_ref, torch.float32, "fwd")


@pytest.mark.parametrize("norm", NORMS)
def test_zero_size(device, norm):
    for shape in [(0, 16), (3, 0)]:
        x = make(shape, torch.float32, device, requires_grad=True)
        r = make(shape, torch.float32, device, requires_grad=True)
        y, h = fused(norm, x, r, shape[-1:], prenorm=True)
        assert y.shape == shape and h.shape == shape
        (y.sum() + h.sum()).backward()
        assert x.grad.shape == shape and r.grad.shape == shape


# ---------------------------------------------------------------------------------------------
# Gradients


def grads_of(fn, tensors, seed_grads):
    outs = fn()
    torch.autograd.backward(outs, seed_grads)
    result = [t.grad.clone() if t is not None and t.grad is not None else None for t in tensors]
    for t in tensors:
        if t is not None:
            t.grad = None
    return result, outs


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("prenorm", [False, True])
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_gradients_match_composition(device, norm, dtype, prenorm, memory_efficient):
    shape = (7, 96)
    x = make(shape, dtype, device, True)
    r = make(shape, dtype, device, True)
    w, b = params(norm, 96, dtype, device, True)
    leaves = [x, r, w, b]
    dy, dh = make(shape, dtype, device), make(shape, dtype, device)
    seeds = [dy, dh] if prenorm else [dy]

    def ours():
        out = fused(norm, x, r, (96,), w, b, alpha=0.8, prenorm=prenorm,
                    memory_efficient=memory_efficient)
        return list(out) if prenorm else [out]

    def theirs():
        xs, rs, ws, bs = [None if t is None else t.to(stats_dtype(dtype)) for t in leaves]
        y, h = composition(norm, xs, rs, (96,), ws, bs, alpha=0.8)
        return [y, h] if prenorm else [y]

    got, _ = grads_of(ours, leaves, seeds)
    want, _ = grads_of(theirs, leaves, [s.to(stats_dtype(dtype)) for s in seeds])
    for name, g, e, t in zip("x r w b".split(), got, want, leaves):
        if t is None:
            continue
        assert g is not None, name
        kind = "wgrad" if name in "wb" else "bwd"
        if memory_efficient and dtype in (torch.float16, torch.bfloat16):
            # xhat recomputed from the rounded 16-bit y is off by a few of y's ulps.
            t = tol(dtype, kind, shape[0])
            torch.testing.assert_close(g.float(), e.float(), atol=4 * t.atol, rtol=4 * t.rtol,
                                       msg=name)
        else:
            assert_close(g, e.to(g.dtype), dtype, kind, shape[0], msg=name)


@pytest.mark.parametrize("norm", NORMS)
def test_gradients_residual_in_fp32(device, norm):
    x = make((5, 32), torch.bfloat16, device, True)
    r = make((5, 32), torch.bfloat16, device, True)
    w, b = params(norm, 32, torch.float32, device, True)
    y, h = fused(norm, x, r, (32,), w, b, prenorm=True, residual_in_fp32=True)
    (y.float().square().sum() + h.sum()).backward()
    assert x.grad.dtype == torch.bfloat16 and r.grad.dtype == torch.bfloat16
    xs, rs = x.detach().float().requires_grad_(), r.detach().float().requires_grad_()
    y_ref, h_ref = composition(norm, xs, rs, (32,), w.detach(), None if b is None else b.detach())
    (y_ref.to(torch.bfloat16).float().square().sum() + h_ref.sum()).backward()
    assert_close(x.grad, xs.grad.to(torch.bfloat16), torch.bfloat16, "bwd")
    assert_close(r.grad, rs.grad.to(torch.bfloat16), torch.bfloat16, "bwd")


@pytest.mark.parametrize("norm", NORMS)
def test_zero_centered_weight_gradients(device, norm):
    x = make((4, 20), torch.float64, device, True)
    r = make((4, 20), torch.float64, device, True)
    w, b = params(norm, 20, torch.float64, device, True)
    leaves = [x, r, w, b]
    dy = make((4, 20), torch.float64, device)
    got, _ = grads_of(lambda: [fused(norm, x, r, (20,), w, b, zero_centered_weight=True)],
                      leaves, [dy])
    want, _ = grads_of(lambda: [composition(norm, x, r, (20,), w, b, zero_centered=True)[0]],
                       leaves, [dy])
    for g, e, t in zip(got, want, leaves):
        if t is not None:
            assert_close(g, e, torch.float64, "bwd")


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("prenorm", [False, True])
def test_gradcheck(device, norm, dropout_p, prenorm):
    x = make((3, 10), torch.float64, device, True)
    r = make((3, 10), torch.float64, device, True)
    w, b = params(norm, 10, torch.float64, device, True)
    seed = torch.tensor([1234], dtype=torch.int64, device=device)
    rms = norm == "rms_norm"

    def fn(x, r, w, b):
        y, h, _, _ = ops.add_norm_fwd(x, r, (10,), w, None if rms else b, 1e-5, rms, 0.7,
                                      dropout_p, seed if dropout_p else None, None, None, False,
                                      True, False)
        return (y, h) if prenorm else y

    args = (x, r, w, b)
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("norm", NORMS)
def test_memory_efficient_has_no_double_backward(device, norm):
    x = make((3, 8), torch.float64, device, True)
    y = fused(norm, x, None, (8,), memory_efficient=True)
    (g,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(NotImplementedError, match="memory_efficient"):
        g.sum().backward()


@pytest.mark.parametrize("norm", NORMS)
def test_weight_grads_are_deterministic(device, norm):
    x = make((300, 64), torch.float32, device, True)
    r = make((300, 64), torch.float32, device)
    w, b = params(norm, 64, torch.float32, device, True)
    dy = make((300, 64), torch.float32, device)
    first = None
    for _ in range(3):
        y = fused(norm, x, r, (64,), w, b)
        got = torch.autograd.grad(y, [w] + ([b] if b is not None else []), dy)
        if first is None:
            first = got
        for a, e in zip(got, first):
            assert torch.equal(a, e)


# ---------------------------------------------------------------------------------------------
# Dropout


def multipliers(x, r, h, alpha, p):
    """The dropout multipliers the op applied (0 or 1 / (1 - p)), recovered from
    h = x * m + alpha * r."""
    raw = (h.double() - alpha * r.double()) / x.double()
    scale = 1 / (1 - p)
    return torch.where(raw.abs() < 0.5 * scale, torch.zeros_like(raw),
                       torch.full_like(raw, scale)).to(x.dtype)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_mask_statistics_and_values(device, norm, p):
    x = make((64, 257), torch.float64, device).add_(5)  # no zeros: the mask can be read back
    r = make((64, 257), torch.float64, device)
    w, b = params(norm, 257, torch.float64, device)
    y, h = fused(norm, x, r, (257,), w, b, dropout_p=p, alpha=0.5, prenorm=True)
    m = multipliers(x, r, h, 0.5, p)
    scale = 1 / (1 - p)
    kept = m != 0
    assert torch.allclose(m[kept], torch.full_like(m[kept], scale))
    dropped = 1 - kept.double().mean().item()
    assert abs(dropped - p) < 4 * math.sqrt(p * (1 - p) / m.numel())
    y_ref, _ = composition(norm, x, r, (257,), w, b, alpha=0.5, mult=m)
    assert_close(y, y_ref, torch.float64, "fwd")


@pytest.mark.parametrize("norm", NORMS)
def test_dropout_is_reproducible_and_fresh_per_call(device, norm):
    x = make((16, 64), torch.float32, device)
    torch.manual_seed(7)
    a = fused(norm, x, None, (64,), dropout_p=0.5)
    b = fused(norm, x, None, (64,), dropout_p=0.5)
    torch.manual_seed(7)
    a2 = fused(norm, x, None, (64,), dropout_p=0.5)
    assert torch.equal(a, a2)
    assert not torch.equal(a, b)


@pytest.mark.parametrize("norm", NORMS)
def test_dropout_backward_regenerates_the_mask(device, norm):
    x = make((9, 50), torch.float64, device, True)
    with torch.no_grad():
        x.add_(3)
    r = make((9, 50), torch.float64, device, True)
    w, b = params(norm, 50, torch.float64, device, True)
    y, h = fused(norm, x, r, (50,), w, b, dropout_p=0.4, prenorm=True)
    m = multipliers(x.detach(), r.detach(), h.detach(), 1.0, 0.4)
    dy, dh = make((9, 50), torch.float64, device), make((9, 50), torch.float64, device)
    leaves = [t for t in (x, r, w, b) if t is not None]
    got = torch.autograd.grad([y, h], leaves, [dy, dh])
    y_ref, h_ref = composition(norm, x, r, (50,), w, b, mult=m)
    want = torch.autograd.grad([y_ref, h_ref], leaves, [dy, dh])
    for g, e in zip(got, want):
        assert_close(g, e, torch.float64, "bwd")


@pytest.mark.parametrize("norm", NORMS)
def test_dropout_edges(device, norm):
    x, r = make((4, 16), torch.float32, device), make((4, 16), torch.float32, device)
    _, h = fused(norm, x, r, (16,), dropout_p=1.0, prenorm=True)
    assert torch.equal(h, r)
    y_eval = fused(norm, x, r, (16,), dropout_p=0.5, training=False)
    y_plain = fused(norm, x, r, (16,))
    assert torch.equal(y_eval, y_plain)
    # Checked in eval too, as torch's dropout does.
    for training in (True, False):
        with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
            fused(norm, x, r, (16,), dropout_p=1.5, training=training)


# ---------------------------------------------------------------------------------------------
# Modules


@pytest.mark.parametrize("cls, base", [(fused_norm.AddLayerNorm, torch.nn.LayerNorm),
                                       (fused_norm.AddRMSNorm, torch.nn.RMSNorm)])
def test_module_state_dict_and_forward(device, cls, base):
    ours = cls(32, device=device)
    theirs = base(32, device=device)
    assert isinstance(ours, base)
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    with torch.no_grad():
        for p in theirs.parameters():
            p.uniform_(0.5, 1.5)
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x, r = make((3, 32), torch.float32, device), make((3, 32), torch.float32, device)
    assert_close(ours(x, r), theirs(x + r), torch.float32, "fwd")
    assert_close(ours(x), theirs(x), torch.float32, "fwd")


def test_module_options(device):
    m = fused_norm.AddRMSNorm(16, alpha=2.0, dropout_p=0.1, prenorm=True,
                              zero_centered_weight=True, device=device)
    assert torch.equal(m.weight, torch.zeros(16, device=device))
    assert "alpha=2.0" in repr(m) and "zero_centered_weight=True" in repr(m)
    x, r = make((2, 16), torch.float32, device), make((2, 16), torch.float32, device)
    m.eval()
    y, h = m(x, r)
    assert_close(h, x + 2 * r, torch.float32, "fwd")
    assert_close(y, F.rms_norm(h, (16,), None, m.eps), torch.float32, "fwd")
    with pytest.raises(ValueError):
        fused_norm.AddLayerNorm(16, dropout_p=-0.1)
    # The options are attributes, read and set as nn.Dropout's p.
    assert m.alpha == 2.0 and m.prenorm and m.dropout_p == 0.1
    m.prenorm, m.alpha = False, 0.5
    y = m(x, r)
    assert isinstance(y, torch.Tensor) and "alpha=0.5" in repr(m)
    assert_close(y, F.rms_norm(x + 0.5 * r, (16,), None, m.eps), torch.float32, "fwd")
    m.train()
    m.dropout_p = 1.5
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        m(x, r)


@pytest.mark.parametrize("cls", [fused_norm.AddLayerNorm, fused_norm.AddRMSNorm])
def test_compile_fullgraph(device, cls):
    m = cls(64, prenorm=True, dropout_p=0.2, device=device)
    x = make((4, 64), torch.float32, device, True)
    r = make((4, 64), torch.float32, device, True)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    y, h = compiled(x, r)
    (y.sum() + h.square().sum()).backward()
    assert x.grad is not None and r.grad is not None and m.weight.grad is not None
    m.eval()
    torch._dynamo.reset()
    compiled = torch.compile(m, fullgraph=True)
    y, h = compiled(x.detach(), r.detach())
    y_ref, h_ref = m(x.detach(), r.detach())
    assert_close(y, y_ref, torch.float32, "fwd")


# ---------------------------------------------------------------------------------------------
# opcheck and bad input


@pytest.mark.parametrize("rms", [False, True])
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_opcheck(device, rms, dropout_p):
    x = make((4, 24), torch.float32, device, True)
    r = make((4, 24), torch.float32, device, True)
    w = make((24,), torch.float32, device, True)
    b = None if rms else make((24,), torch.float32, device, True)
    seed = torch.tensor([99], dtype=torch.int64, device=device) if dropout_p else None
    args = (x, r, (24,), w, b, 1e-5, rms, 0.9, dropout_p, seed, None, None, False, True, False)
    torch.library.opcheck(ops.add_norm_fwd, args)
    y, h, mean, rstd = ops.add_norm_fwd(*args)
    dy, dh = torch.randn_like(y), torch.randn_like(h)
    for saved, from_output in ((h.detach(), False), (y.detach(), True)):
        bwd_args = (dy, dh, saved, (24,), mean, rstd, w.detach(), None if b is None else b.detach(),
                    rms, 0.9, dropout_p, seed, False, from_output, torch.float32, torch.float32,
                    [True, True, True, not rms])
        # The memory-efficient backward has no backward of its own (double backward raises), so
        # aot_dispatch, which differentiates it, is left out there.
        utils = (("test_schema", "test_autograd_registration", "test_faketensor") if from_output
                 else ("test_schema", "test_autograd_registration", "test_faketensor",
                       "test_aot_dispatch_dynamic"))
        torch.library.opcheck(ops.add_norm_bwd, bwd_args, test_utils=utils)


def test_bad_inputs(device):
    x = make((4, 8), torch.float32, device)
    with pytest.raises(RuntimeError, match="expected residual of shape"):
        fused_norm.add_layer_norm(x, make((4, 9), torch.float32, device), (8,))
    with pytest.raises(NotImplementedError, match="not implemented for 'Long'"):
        fused_norm.add_layer_norm(x.long(), None, (8,))
    with pytest.raises(RuntimeError, match="float64 cannot be mixed"):
        fused_norm.add_rms_norm(x.double(), x, (8,))
    with pytest.raises(RuntimeError, match="Expected weight to be of same shape"):
        fused_norm.add_layer_norm(x, x, (8,), make((7,), torch.float32, device))
    with pytest.raises(RuntimeError, match="Given normalized_shape"):
        fused_norm.add_rms_norm(x, x, (5,))
    with pytest.raises(RuntimeError, match="dropout_seed"):
        ops.add_norm_fwd(x, x, (8,), None, None, 1e-5, False, 1.0, 0.5, None, None, None, False,
                         True, False)


@requires_cuda
def test_cuda_matches_cpu_mask_and_limits():
    x = make((6, 100), torch.float32, "cpu").add_(4)
    seed = torch.tensor([42], dtype=torch.int64)
    args = ((100,), None, None, 1e-5, False, 1.0, 0.5)
    tail = (None, None, False, True, False)
    _, h_cpu, _, _ = ops.add_norm_fwd(x, None, *args, seed, *tail)
    _, h_cuda, _, _ = ops.add_norm_fwd(x.cuda(), None, *args, seed.cuda(), *tail)
    assert torch.equal(h_cpu, h_cuda.cpu())
    big = make((2, 8193), torch.float32, "cuda")
    with pytest.raises(NotImplementedError, match="rows of up to 8192"):
        fused_norm.add_layer_norm(big, big, (8193,))
