"""Plain-torch reference math of the fused ops, differentiable to any order.

Used by the tests and benchmarks as an independent oracle, and by _ops.py for double backward.
Statistics and arithmetic are in the opmath dtype (float32, float64 for float64 input); results
come back in the input's dtype, like the kernels.
"""

import math

import torch


def stats_dtype(dtype):
    """The dtype statistics are kept in: float64 for float64 input, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _rows(x, normalized_shape):
    """x as [M, N]: N = prod(normalized_shape), M the rest."""
    N = math.prod(normalized_shape)
    M = math.prod(x.shape[: x.dim() - len(normalized_shape)])
    return x.reshape(M, N).to(stats_dtype(x.dtype))


def layer_norm_ref(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    normalized_shape = tuple(normalized_shape)
    rows = _rows(x, normalized_shape)
    mean = rows.mean(-1, keepdim=True)
    var = (rows - mean).square().mean(-1, keepdim=True)
    y = ((rows - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.to(y.dtype)
    if bias is not None:
        y = y + bias.to(y.dtype)
    return y.to(x.dtype)


def rms_norm_ref(x, normalized_shape, weight=None, eps=None):
    normalized_shape = tuple(normalized_shape)
    rows = _rows(x, normalized_shape)
    if eps is None:
        eps = torch.finfo(rows.dtype).eps
    y = (rows * torch.rsqrt(rows.square().mean(-1, keepdim=True) + eps)).reshape(x.shape)
    if weight is not None:
        y = y * weight.to(y.dtype)
    return y.to(x.dtype)


def add_norm_ref(x, residual, normalized_shape, weight=None, bias=None, eps=1e-5, rms=False,
                 alpha=1.0, dropout=None, residual_dtype=None, out_dtype=None,
                 zero_centered_weight=False):
    """The unfused add + norm of add_layer_norm / add_rms_norm: h = dropout(x) + alpha * residual
    in opmath (dropout: a callable on x in opmath, or None), rounded to the residual stream's
    dtype (residual_dtype, by default the residual's, else x's); the norm of h in opmath, with
    the weight as (1 + weight) when zero-centered; y rounded to out_dtype (by default x's).
    Returns (y, h)."""
    acc = stats_dtype(x.dtype)
    if residual_dtype is None:
        residual_dtype = residual.dtype if residual is not None else x.dtype
    h = x.to(acc) if dropout is None else dropout(x.to(acc))
    if residual is not None:
        h = h + alpha * residual.to(acc)
    h = h.to(residual_dtype)
    w = None if weight is None else weight.to(acc) + (1 if zero_centered_weight else 0)
    if rms:
        y = torch.nn.functional.rms_norm(h.to(acc), normalized_shape, w, eps)
    else:
        y = torch.nn.functional.layer_norm(h.to(acc), normalized_shape, w,
                                           None if bias is None else bias.to(acc), eps)
    return y.to(out_dtype or x.dtype), h


def row_norm_bwd_ref(grad_out, x, normalized_shape, mean, rstd, weight, rms):
    """(dx, dweight, dbias) of LayerNorm (rms=False) or RMSNorm given the saved statistics.

    mean/rstd are [M]; mean is ignored for RMSNorm. dweight is None without weight; dbias (the
    column sum of grad_out) is in the weight's dtype, or the input's without weight.
    """
    normalized_shape = tuple(normalized_shape)
    N = math.prod(normalized_shape)
    rows = _rows(x, normalized_shape)
    dy = _rows(grad_out, normalized_shape)
    rstd = rstd.to(rows.dtype)[:, None]
    centered = rows if rms else rows - mean.to(rows.dtype)[:, None]
    xhat = centered * rstd
    g = dy if weight is None else dy * weight.to(rows.dtype).reshape(1, N)
    inner = g - xhat * (g * xhat).mean(-1, keepdim=True)
    if not rms:
        inner = inner - g.mean(-1, keepdim=True)
    dx = (rstd * inner).reshape(x.shape).to(x.dtype)
    param_dtype = x.dtype if weight is None else weight.dtype
    dweight = None if weight is None else (dy * xhat).sum(0).reshape(normalized_shape).to(param_dtype)
    dbias = dy.sum(0).reshape(normalized_shape).to(param_dtype)
    return dx, dweight, dbias


def batch_norm_ref(x, mean=None, var=None, weight=None, bias=None, eps=1e-5, residual=None,
                   relu=False):
    """BatchNorm over dim 1 of x (N, C, *) with the fused epilogue act(bn(x) + residual).

    With mean/var None the batch statistics (biased variance) are used, else the given ones.
    """
    dtype = stats_dtype(x.dtype)
    xs = x.to(dtype)
    dims = [d for d in range(x.dim()) if d != 1]
    shape = [1, -1] + [1] * (x.dim() - 2)
    if mean is None:
        mean = xs.mean(dims)
        var = (xs - mean.reshape(shape)).square().mean(dims)
    y = (xs - mean.to(dtype).reshape(shape)) * torch.rsqrt(var.to(dtype).reshape(shape) + eps)
    if weight is not None:
        y = y * weight.to(dtype).reshape(shape)
    if bias is not None:
        y = y + bias.to(dtype).reshape(shape)
    if residual is not None:
        y = y + residual.to(dtype)
    if relu:
        y = torch.relu(y)
    return y.to(x.dtype)


ACTIVATIONS = {
    "none": lambda z: z,
    "relu": torch.relu,
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
    "mish": torch.nn.functional.mish,
}


def group_norm_ref(x, num_groups, weight=None, bias=None, eps=1e-5, activation="none"):
    """act(GroupNorm(x)) over (N, C, *), statistics per (sample, group) in the opmath dtype."""
    dtype = stats_dtype(x.dtype)
    N, C = x.shape[:2]
    groups = x.to(dtype).reshape(N, num_groups, -1)
    mean = groups.mean(-1, keepdim=True)
    var = (groups - mean).square().mean(-1, keepdim=True)
    z = ((groups - mean) * torch.rsqrt(var + eps)).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        z = z * weight.to(dtype).reshape(shape)
    if bias is not None:
        z = z + bias.to(dtype).reshape(shape)
    return ACTIVATIONS[activation](z).to(x.dtype)


# The standalone activations by the kind names of fused_norm::activation_fwd and their argument
# lists, as torch's own ops (differentiable to any order).
_ACTIVATION_KINDS = {
    "relu": lambda z: torch.relu(z),
    "leaky_relu": lambda z, slope: torch.nn.functional.leaky_relu(z, slope),
    "elu": lambda z, alpha, scale, input_scale: torch.ops.aten.elu(z, alpha, scale, input_scale),
    "gelu": lambda z: torch.nn.functional.gelu(z),
    "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
    "silu": lambda z: torch.nn.functional.silu(z),
    "hardswish": lambda z: torch.nn.functional.hardswish(z),
    "hardsigmoid": lambda z: torch.nn.functional.hardsigmoid(z),
    "hardtanh": lambda z, lo, hi: torch.nn.functional.hardtanh(z, lo, hi),
    "mish": lambda z: torch.nn.functional.mish(z),
    "sigmoid": lambda z: torch.sigmoid(z),
    "tanh": lambda z: torch.tanh(z),
    "softplus": lambda z, beta, threshold: torch.nn.functional.softplus(z, beta, threshold),
}


def activation_ref(x, kind, args):
    """act(x) for fused_norm::activation_fwd's `kind` and `args`, in torch."""
    return _ACTIVATION_KINDS[kind](x, *args)


def gated_ref(a, b, activation):
    """act(a) * b in opmath, rounded to a's dtype, for the gated units' activation names
    ("silu", "gelu", "gelu_tanh"); b None: a, b = a.chunk(2, -1)."""
    if b is None:
        a, b = a.chunk(2, -1)
    acc = stats_dtype(a.dtype)
    return (ACTIVATIONS[activation](a.to(acc)) * b.to(acc)).to(a.dtype)


def dyt_ref(x, alpha, weight=None, bias=None):
    """DyT as the plain composition: weight * tanh(alpha * x) + bias."""
    y = torch.tanh(alpha * x)
    if weight is not None:
        y = weight * y
    if bias is not None:
        y = y + bias
    return y


def dyt_bwd_ref(dy, x, alpha, weight, n):
    """(dx, dalpha, dweight, dbias) of DyT as differentiable torch ops, in the opmath dtype, for
    weight and bias of n elements:
    t = tanh(alpha * x), s = 1 - t^2, g = dy * weight; dx = g * alpha * s,
    dalpha = sum(g * x * s), dweight = sum over rows of dy * t, dbias = sum over rows of dy."""
    dtype = stats_dtype(x.dtype)
    dy, x, a = dy.to(dtype), x.to(dtype), alpha.to(dtype)
    rows = -1 if n else 0  # as [rows, n]; with n == 0 there are no elements
    dy, x = dy.reshape(rows, n), x.reshape(rows, n)
    t = torch.tanh(a * x)
    s = 1 - t * t
    g = dy * weight.to(dtype).reshape(-1) if weight is not None else dy
    dx = g * a * s
    dalpha = (g * x * s).sum().reshape(alpha.shape)
    return dx, dalpha, (dy * t).sum(0), dy.sum(0)
