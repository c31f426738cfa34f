"""Functional forms, with the signatures and defaults of torch.nn.functional."""

import contextlib
import functools
import numbers

import torch

from . import _batch_norm, _ops
from ._arguments import check_dropout_p, torch_bool, torch_float, torch_int, torch_shape
from .reference import add_norm_ref, group_norm_ref, stats_dtype

# Under a torch.func transform or forward-mode AD, and for input our kernels do not take
# (nested, sparse, quantized, DTensor: _ops.defer_to_torch), each function below runs torch's
# own function, or for a fused op its plain-torch composition (reference.py).

__all__ = [
    "add_layer_norm", "add_rms_norm", "batch_norm", "batch_norm_add_relu", "batch_norm_relu",
    "group_norm", "group_norm_act", "instance_norm", "layer_norm", "rms_norm",
]


def _as_shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Like torch.nn.functional.layer_norm."""
    if _ops.defer_to_torch(input):
        return torch.nn.functional.layer_norm(input, normalized_shape, weight, bias, eps)
    shape = torch_shape("layer_norm", normalized_shape)
    torch_float("layer_norm", "eps", 5, eps)
    # The kernels read rows of contiguous memory: a permuted input (ConvNeXt's NHWC view of a
    # channels-first activation) is copied first, as torch's layer_norm does, but by a transpose.
    return _ops.ops.layer_norm_fwd(_ops.contiguous(input), shape, weight, bias, eps)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """Like torch.nn.functional.rms_norm; eps=None means the machine epsilon of the dtype the
    statistics are computed in (float32 for 16- and 32-bit input, float64 for float64)."""
    if _ops.defer_to_torch(input) or input.is_complex():
        # torch's composite rms_norm also takes complex input, which our kernels do not.
        return torch.nn.functional.rms_norm(input, normalized_shape, weight, eps)
    shape = torch_shape("rms_norm", normalized_shape)
    if eps is None:
        eps = torch.finfo(stats_dtype(input.dtype)).eps
    torch_float("rms_norm", "eps", 4, eps)
    if (weight is not None and weight.dtype != input.dtype and weight.is_floating_point()
            and input.is_floating_point()):
        # torch's rms_norm takes a weight of any floating dtype (the output keeps the input's);
        # the kernel takes the input's dtype, or float32 beside a 16-bit input.
        weight = weight.to(input.dtype if input.element_size() > 2 else torch.float32)
    y = _ops.ops.rms_norm_fwd(_ops.contiguous(input), shape, weight, eps)[0]  # as layer_norm
    # torch's rms_norm keeps a channels_last input's memory format (its layer_norm does not).
    fmt = _ops.channels_last_format(input)
    return y if fmt is None else y.contiguous(memory_format=fmt)


def _add_norm(input, residual, normalized_shape, weight, bias, eps, rms, alpha, dropout_p,
              training, prenorm, residual_in_fp32, out_dtype, zero_centered_weight,
              memory_efficient):
    check_dropout_p(dropout_p)  # in eval too, as torch's dropout
    dropout_p = float(dropout_p) if training else 0.0
    residual_dtype = torch.float32 if residual_in_fp32 and input.dtype != torch.float64 else None
    if _ops.defer_to_torch(input):
        dropout = functools.partial(torch.nn.functional.dropout, p=dropout_p) if dropout_p else None
        y, h = add_norm_ref(input, residual, _as_shape(normalized_shape), weight, bias, eps, rms,
                            alpha, dropout, residual_dtype, out_dtype, zero_centered_weight)
        return (y, h) if prenorm else y
    seed = None
    if dropout_p > 0:
        # One 64-bit key per call from torch's generator: reproducible under torch.manual_seed,
        # traced by torch.compile like any random op, and all the backward needs to regenerate
        # the mask.
        seed = torch.randint(-(2**63), 2**63 - 1, (1,), dtype=torch.int64, device=input.device)
    needs_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (input, residual, weight, bias))
    # h is written when returned, and when the backward needs it (unless it is the input).
    h_is_input = residual is None and dropout_p == 0 and residual_dtype is None
    write_sum = prenorm or (needs_grad and not memory_efficient and not h_is_input)
    y, h, _, _ = _ops.ops.add_norm_fwd(
        input, residual, _as_shape(normalized_shape), weight, bias, eps, rms, float(alpha),
        dropout_p, seed, residual_dtype, out_dtype, zero_centered_weight, write_sum,
        memory_efficient)
    return (y, h) if prenorm else y


def add_layer_norm(input, residual, normalized_shape, weight=None, bias=None, eps=1e-5, *,
                   alpha=1.0, dropout_p=0.0, training=True, prenorm=False,
                   residual_in_fp32=False, out_dtype=None, zero_centered_weight=False,
                   memory_efficient=False):
    """layer_norm(h), h = dropout(input) + alpha * residual, in one pass each way.

    The residual add of a transformer block fused with its LayerNorm. `residual` may be None
    (then h = dropout(input)). alpha scales the residual (DeepNorm: norm(alpha * x + f(x)) is
    ``add_layer_norm(f(x), x, ..., alpha=alpha)``); dropout applies to `input` in training, with a
    mask drawn from torch's generator that the backward regenerates. With prenorm=True returns
    (y, h): h is the residual stream for the next block, in float32 with residual_in_fp32, else in
    the residual's dtype (the input's without residual). out_dtype: y's dtype (default the
    input's). zero_centered_weight: the weight is applied as (1 + weight). memory_efficient:
    autograd saves y instead of h and recomputes from it (the weight must have no zeros).
    """
    return _add_norm(input, residual, normalized_shape, weight, bias, eps, False, alpha,
                     dropout_p, training, prenorm, residual_in_fp32, out_dtype,
                     zero_centered_weight, memory_efficient)


def add_rms_norm(input, residual, normalized_shape, weight=None, eps=None, *, alpha=1.0,
                 dropout_p=0.0, training=True, prenorm=False, residual_in_fp32=False,
                 out_dtype=None, zero_centered_weight=False, memory_efficient=False):
    """rms_norm(h), h = dropout(input) + alpha * residual: add_layer_norm's options for RMSNorm
    (zero_centered_weight=True is Gemma's (1 + weight) RMSNorm). eps=None as in rms_norm."""
    if eps is None:
        eps = torch.finfo(stats_dtype(input.dtype)).eps
    return _add_norm(input, residual, normalized_shape, weight, None, eps, True, alpha,
                     dropout_p, training, prenorm, residual_in_fp32, out_dtype,
                     zero_centered_weight, memory_efficient)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Like torch.nn.functional.batch_norm."""
    return _batch_norm.batch_norm(input, running_mean, running_var, weight, bias, training,
                                  momentum, eps)


def batch_norm_relu(input, running_mean, running_var, weight=None, bias=None, training=False,
                    momentum=0.1, eps=1e-5):
    """relu(batch_norm(...)) in one pass; arguments as torch.nn.functional.batch_norm."""
    return _batch_norm.batch_norm(input, running_mean, running_var, weight, bias, training,
                                  momentum, eps, relu=True)


def batch_norm_add_relu(input, residual, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=0.1, eps=1e-5):
    """relu(batch_norm(input, ...) + residual) in one pass: the tail of a ResNet block."""
    return _batch_norm.batch_norm(input, running_mean, running_var, weight, bias, training,
                                  momentum, eps, residual=residual, relu=True)


_ACTIVATION_ALIASES = {None: "none", "swish": "silu"}


def _activation_name(activation):
    name = _ACTIVATION_ALIASES.get(activation, activation)
    if name not in ("none", "relu", "silu", "gelu", "gelu_tanh", "mish"):
        raise ValueError(
            f"activation must be one of None, 'relu', 'silu' ('swish'), 'gelu', 'gelu_tanh', "
            f"'mish', but got {activation!r}")
    return name


def _verify_group_norm_size(input, num_groups):
    """torch's check: more than one value per (sample, group). Its division by num_groups
    comes first: num_groups = 0 raises ZeroDivisionError, as torch's."""
    if input.dim() >= 2:
        values = input.size(0) * input.size(1) // num_groups
        for size in input.shape[2:]:
            values *= size
        if values == 1:
            sizes = [input.size(0) * input.size(1) // num_groups, num_groups] + list(input.shape[2:])
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {sizes}")


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """Like torch.nn.functional.group_norm."""
    if _ops.defer_to_torch(input):
        return torch.nn.functional.group_norm(input, num_groups, weight, bias, eps)
    num_groups = torch_int("group_norm", "num_groups", 2, num_groups)
    torch_float("group_norm", "eps", 5, eps)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    _verify_group_norm_size(input, num_groups)
    return _ops.ops.group_norm_fwd(input, num_groups, weight, bias, eps, "none")[0]


def group_norm_act(input, num_groups, weight=None, bias=None, eps=1e-5, activation="silu"):
    """activation(group_norm(input, ...)) in one pass forward and one backward (the backward
    recomputes the normalized value instead of storing it). activation: None, 'relu', 'silu'
    (or 'swish'), 'gelu', 'gelu_tanh' (GELU with approximate='tanh') or 'mish'."""
    name = _activation_name(activation)
    if _ops.defer_to_torch(input):
        return group_norm_ref(input, num_groups, weight, bias, eps, name)
    num_groups = torch_int("group_norm_act", "num_groups", 2, num_groups)
    if input.dim() < 2:
        raise RuntimeError(
            f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    _verify_group_norm_size(input, num_groups)
    return _ops.ops.group_norm_fwd(input, num_groups, weight, bias, eps, name)[0]


def instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5):
    """Like torch.nn.functional.instance_norm: GroupNorm with one group per channel when
    use_input_stats, else the running statistics (an eval BatchNorm). Like torch's, it
    normalizes input.contiguous(): the output is contiguous whatever the input's memory format
    (and a channels_last input costs one copy, as torch's, before NCHW rows: ours a transpose,
    _ops.contiguous)."""
    if _ops.defer_to_torch(input):
        return torch.nn.functional.instance_norm(input, running_mean, running_var, weight, bias,
                                                 use_input_stats, momentum, eps)
    torch_bool("instance_norm", "use_input_stats", 6, use_input_stats)
    torch_float("instance_norm", "momentum", 7, momentum)
    torch_float("instance_norm", "eps", 8, eps)
    _batch_norm.check_running_stats(running_mean, running_var)
    input = _ops.contiguous(input)
    if not use_input_stats:
        return _batch_norm.batch_norm(input, running_mean, running_var, weight, bias, False,
                                      momentum, eps)
    # torch's check, which a 1-D or 2-D input fails too (no spatial elements: a product of 1).
    spatial = 1
    for size in input.shape[2:]:
        spatial *= size
    if spatial == 1:
        raise ValueError(
            f"Expected more than 1 spatial element when training, got input size {input.size()}")
    C = input.size(1)
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None and stat.numel() != C:
            # torch checks the repeated [N * C] statistics.
            raise RuntimeError(f"{name} should contain {input.size(0) * C} elements not "
                               f"{stat.numel() * input.size(0)}")
    if input.numel() == 0 and (input.size(0) > 0 or C == 0):
        # Instances without elements (a zero spatial size), or no instances for lack of
        # channels, which GroupNorm refuses: torch gives an empty output (zero weight and bias
        # gradients) and keeps the running statistics.
        return _empty_instance_norm(input, weight, bias)
    # torch's instance_norm keeps the input's dtype under autocast (group_norm goes to float32).
    # (The region only where autocast is on: torch.export would keep it in the graph.)
    device = input.device.type
    with torch.autocast(device, enabled=False) if (
            torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    ) else contextlib.nullcontext():
        y, mean, _ = _ops.ops.group_norm_fwd(input, C, weight, bias, eps, "none")
    # The running statistics from detached statistics rather than under no_grad: a no_grad
    # region in the graph of torch.export makes a program that torch.export.load refuses.
    if input.size(0) == 0:
        # torch averages the per-instance statistics over no instances: NaN.
        for stat in (running_mean, running_var):
            if stat is not None:
                stat.fill_(float("nan"))
    else:
        if running_mean is not None:
            running_mean.lerp_(mean.detach().mean(0).to(running_mean.dtype), momentum)
        if running_var is not None:
            # Each instance's unbiased variance, computed again from the input (in the
            # statistics' dtype): rebuilt from rstd = 1 / sqrt(var + eps) it would lose the
            # digits eps takes, and a constant instance could get a negative variance.
            flat = input.detach().flatten(2).to(stats_dtype(input.dtype))
            var = torch.var(flat, dim=2, correction=1)
            running_var.lerp_(var.mean(0).to(running_var.dtype), momentum)
    return y


def _empty_instance_norm(input, weight, bias):
    """instance_norm of an input without elements: an empty output that the graph links to
    input, weight and bias, so that they get (empty and zero) gradients as torch's do."""
    channel_shape = (1, -1) + (1,) * (input.dim() - 2)
    y = input.clone()
    if weight is not None:
        y = y * weight.reshape(channel_shape)
    if bias is not None:
        y = y + bias.reshape(channel_shape)
    return y.to(input.dtype)
