"""Python-side registration of the fused_norm ops: fake (meta) kernels, autograd, autocast.

The schemas and the CPU/CUDA kernels are registered in C++ (csrc/registration.cpp); importing
fused_norm._C loads them.
"""

import functools
import math
import sys

import torch
from torch._prims_common import suggest_memory_format

try:
    from . import _C  # noqa: F401  (loads the library: schemas and kernels)
except ImportError as error:
    raise ImportError(
        "fused_norm's compiled extension (fused_norm._C) is missing or does not load: build it "
        "with `pip install --no-build-isolation -e .` against the torch you run "
        f"(torch {torch.__version__}). Cause: {error}"
    ) from error
from .reference import (ACTIVATIONS, activation_ref, batch_norm_ref, dyt_bwd_ref,
                        row_norm_bwd_ref, stats_dtype)

ops = torch.ops.fused_norm


def _num_rows(input, normalized_shape):
    return math.prod(input.shape[: input.dim() - len(normalized_shape)])


def _unwanted(input):
    """What the backward ops return for an output they were not asked for."""
    return input.new_empty((0,))


# ---------------------------------------------------------------------------------------------
# Fake kernels: shapes and dtypes of the outputs, for torch.compile and meta tensors.


def _register_fake(name):
    """torch.library.register_fake, with the device check the real kernels make (C++,
    check_same_device). The dispatcher sends a call with any meta tensor among its arguments
    here, where a CPU input with meta parameters (a model built on the meta device and never
    materialised) would otherwise get an uninitialised CPU output."""

    def register(fake):
        @functools.wraps(fake)
        def checked(*args, **kwargs):
            devices = {t.device for t in _tensors_of((*args, *kwargs.values()))}
            if len(devices) > 1:
                first, second = sorted(devices, key=str)[:2]
                raise RuntimeError(
                    "Expected all tensors to be on the same device, but found at least two "
                    f"devices, {first} and {second}!")
            return fake(*args, **kwargs)

        return torch.library.register_fake(name)(checked)

    return register


def _tensors_of(args):
    for arg in args:
        if isinstance(arg, torch.Tensor):
            yield arg
        elif isinstance(arg, (list, tuple)):
            yield from _tensors_of(arg)


@_register_fake("fused_norm::layer_norm_fwd")
def _layer_norm_fwd_fake(input, normalized_shape, weight, bias, eps):
    M = _num_rows(input, normalized_shape)
    stats = stats_dtype(input.dtype)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        input.new_empty((M,), dtype=stats),
        input.new_empty((M,), dtype=stats),
    )


@_register_fake("fused_norm::rms_norm_fwd")
def _rms_norm_fwd_fake(input, normalized_shape, weight, eps):
    M = _num_rows(input, normalized_shape)
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format),
        input.new_empty((M,), dtype=stats_dtype(input.dtype)),
    )


def _param_grad_fake(wanted, param, input):
    if wanted and param is not None:
        return torch.empty_like(param, memory_format=torch.contiguous_format)
    return _unwanted(input)


@_register_fake("fused_norm::layer_norm_bwd")
def _layer_norm_bwd_fake(grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask):
    dx = torch.empty_like(input, memory_format=torch.contiguous_format)
    return (
        dx if output_mask[0] else _unwanted(input),
        _param_grad_fake(output_mask[1], weight, input),
        _param_grad_fake(output_mask[2], bias, input),
    )


@_register_fake("fused_norm::rms_norm_bwd")
def _rms_norm_bwd_fake(grad_out, input, normalized_shape, rstd, weight, output_mask):
    dx = torch.empty_like(input, memory_format=torch.contiguous_format)
    return dx if output_mask[0] else _unwanted(input), _param_grad_fake(output_mask[1], weight, input)


def _per_channel(input):
    return input.new_empty((input.shape[1],), dtype=stats_dtype(input.dtype))


@_register_fake("fused_norm::batch_norm_stats")
def _batch_norm_stats_fake(input):
    return _per_channel(input), _per_channel(input)


@_register_fake("fused_norm::batch_norm_elemt")
def _batch_norm_elemt_fake(input, mean, var, weight, bias, residual, eps, relu):
    return _layout_empty(input)


@_register_fake("fused_norm::batch_norm_bwd_reduce")
def _batch_norm_bwd_reduce_fake(grad_out, input, mean, relu_output, want_grad_residual):
    wanted = want_grad_residual and relu_output is not None
    grad_residual = _layout_empty(input) if wanted else _unwanted(input)
    return _per_channel(input), _per_channel(input), grad_residual


@_register_fake("fused_norm::batch_norm_bwd_elemt")
def _batch_norm_bwd_elemt_fake(grad_out, input, mean, var, weight, relu_output, sum_dy,
                               sum_dy_xmu, eps, count):
    return _layout_empty(input)


@_register_fake("fused_norm::batch_norm_fwd")
def _batch_norm_fwd_fake(input, weight, bias, residual, running_mean, running_var, training,
                         momentum, eps, relu):
    if training:
        return _layout_empty(input), _per_channel(input), _per_channel(input)
    empty = input.new_empty((0,), dtype=stats_dtype(input.dtype))
    return _layout_empty(input), empty, empty.clone()


@_register_fake("fused_norm::batch_norm_bwd")
def _batch_norm_bwd_fake(grad_out, input, mean, var, weight, bias, relu_output, eps, training,
                         output_mask):
    return (
        _layout_empty(input) if output_mask[0] else _unwanted(input),
        _param_grad_fake(output_mask[1], weight, input),
        _param_grad_fake(output_mask[2], bias, input),
        _layout_empty(input) if output_mask[3] and relu_output is not None
        else _unwanted(input),
    )


def under_function_transform():
    """True under a torch.func transform (vmap, grad, vjp, jacrev, jvp, jacfwd, hessian, ...) or
    inside forward-mode AD's dual_level. There the public functions run torch's own functions
    (or the plain-torch composition of a fused op, reference.py) instead of our ops: the ops'
    autograd is a C++ autograd Function, which functorch's grad transforms refuse and which has
    no forward-mode formula, and vmap would run an op once per sample. Off while torch.compile
    traces (which sees a functorch interpreter where there is none): a compiled function keeps
    our ops, and a compiled torch.func transform over them is not supported (vmap runs, through
    torch's per-sample fallback; grad raises)."""
    if torch.compiler.is_compiling():
        return False
    return (torch._C._functorch.peek_interpreter_stack() is not None
            or torch.autograd.forward_ad._current_level >= 0)


class FusedModule:
    """First base of every fused_norm module, for the frontends that tell torch.nn's modules
    apart from others.

    torch.jit.script (which torch deprecates) refuses it up front with a clear error, instead of
    failing deep inside its compiler on the Python of our functions. torch.jit.trace and
    torch.export record our ops and torch.compile runs them; a model converted by
    fused_norm.convert scripts again after fused_norm.revert. (The hook may not hand TorchScript
    a torch.nn stand-in instead: TorchScript writes what it returns into the parent's
    submodules, which would silently un-convert the user's eager model.)

    torch.fx's symbolic tracing keeps it a leaf (a call_module node), as it keeps torch.nn's
    modules (_fx_leaf_module below)."""

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script does not support fused_norm.{type(self).__name__}: use "
            "torch.jit.trace, torch.export or torch.compile (which keep fused_norm's kernels), "
            "or script the model with torch.nn's modules (fused_norm.revert(model) after "
            "fused_norm.convert)")


def _fx_leaf_module(is_leaf_module):
    """torch.fx.Tracer.is_leaf_module that also keeps fused_norm's modules leaves. The tracer
    keeps torch.nn's modules (those of the torch.nn package) leaves, so traced models call them
    rather than trace their Python, which branches on the input (BatchNorm's rank check) and
    reads the training flag; converted, the same models would not trace (torchvision's
    create_feature_extractor of a converted ResNet), or would fix training mode into the graph."""

    @functools.wraps(is_leaf_module)
    def wrapper(self, m, module_qualified_name):
        return isinstance(m, FusedModule) or is_leaf_module(self, m, module_qualified_name)

    return wrapper


torch.fx.Tracer.is_leaf_module = _fx_leaf_module(torch.fx.Tracer.is_leaf_module)


def _is_dtensor(input):
    # Looked up, not imported: importing torch.distributed.tensor costs 0.7 s, and a program with
    # DTensors has imported it.
    module = sys.modules.get("torch.distributed.tensor")
    return module is not None and isinstance(input, module.DTensor)


def defer_to_torch(input):
    """Whether a public function hands the call on input to torch's own function (a fused op:
    to its plain-torch composition, reference.py): under a torch.func transform or forward-mode
    AD (under_function_transform), and for tensors our kernels do not take but torch's functions
    may: nested (jagged) tensors, layouts other than strided (sparse), quantized tensors and
    DTensors (tensor parallelism; our ops have no sharding rules). There torch's result, or
    torch's error, is the answer: for an input that is no tensor at all, torch's TypeError."""
    return (not isinstance(input, torch.Tensor) or input.is_nested
            or input.layout != torch.strided or input.is_quantized or _is_dtensor(input)
            or under_function_transform())


def channels_last_format(input):
    """The memory format torch's norms give the output of a non-contiguous 4-D or 5-D input:
    its suggest_memory_format, torch.channels_last or channels_last_3d for strides ordered so (a
    strided slice of a channels_last tensor too), else None (contiguous, as for every other
    input; a tensor both contiguous and channels-last, C == 1, counts as contiguous). The same
    rule as csrc/common/tensor_utils.h's, which the kernels' outputs follow."""
    if input.dim() not in (4, 5) or input.is_contiguous():
        return None
    fmt = suggest_memory_format(input)
    return None if fmt == torch.contiguous_format else fmt


def contiguous(input):
    """input.contiguous(); a non-contiguous CPU input through fused_norm::contiguous_copy, a
    blocked transpose for the layouts that are one (channels_last, NHWC views of NCHW), where
    torch's copy walks the input element by element."""
    if input.is_contiguous() or input.device.type != "cpu":
        return input.contiguous()
    return ops.contiguous_copy(input)


def _layout_empty(input):
    """An empty tensor like `input` in the memory format the column-norm, group-norm and PReLU
    ops give their outputs: channels_last_format's, or contiguous."""
    return torch.empty_like(input, memory_format=channels_last_format(input)
                            or torch.contiguous_format)


@_register_fake("fused_norm::group_norm_fwd")
def _group_norm_fwd_fake(input, num_groups, weight, bias, eps, activation):
    stats = stats_dtype(input.dtype)
    N = input.shape[0]
    return (
        _layout_empty(input),
        input.new_empty((N, num_groups), dtype=stats),
        input.new_empty((N, num_groups), dtype=stats),
    )


@_register_fake("fused_norm::group_norm_bwd")
def _group_norm_bwd_fake(grad_out, input, num_groups, mean, rstd, weight, bias, activation,
                         output_mask):
    return (
        _layout_empty(input) if output_mask[0] else _unwanted(input),
        _param_grad_fake(output_mask[1], weight, input),
        _param_grad_fake(output_mask[2], bias, input),
    )


@_register_fake("fused_norm::softmax_fwd")
def _softmax_fwd_fake(input, dim, log):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_register_fake("fused_norm::softmax_bwd")
def _softmax_bwd_fake(grad_out, output, dim, log):
    return torch.empty_like(output, memory_format=torch.contiguous_format)


def _check_halving(input):
    """torch.nn.functional.glu's checks of the halved last dim, as the kernels make them."""
    torch._check(input.dim() > 0,
                 lambda: "glu does not support scalars because halving size must be even")
    torch._check(input.shape[-1] % 2 == 0,
                 lambda: f"Halving dimension must be even, but dimension {input.dim() - 1} is "
                         f"size {input.shape[-1]}")


@_register_fake("fused_norm::gated_chunk_fwd")
def _gated_chunk_fwd_fake(input, activation):
    _check_halving(input)
    return input.new_empty((*input.shape[:-1], input.shape[-1] // 2))


@_register_fake("fused_norm::gated_chunk_bwd")
def _gated_chunk_bwd_fake(grad_out, input, activation):
    _check_halving(input)
    return input.new_empty(input.shape)


@_register_fake("fused_norm::gated_fwd")
def _gated_fwd_fake(a, b, activation):
    return a.new_empty(a.shape)


@_register_fake("fused_norm::gated_bwd")
def _gated_bwd_fake(grad_out, a, b, activation):
    return a.new_empty(a.shape), a.new_empty(a.shape)


# ---------------------------------------------------------------------------------------------
# Autograd. The forward ops' autograd is C++ (csrc/common/norm_autograd.cpp: it calls the
# backward op); the backward ops' own backward (double backward) is here and differentiates the
# reference formula of row_norm_bwd_ref.


def _differentiable_stats(rows, mean, rstd, rms):
    """mean and rstd with their saved values but the derivatives of functions of `rows`.

    The backward op takes the statistics as inputs, but they are functions of x: its own
    backward must differentiate through them. var + eps = 1 / rstd^2, so rstd can be rebuilt
    from the variance of `rows` exactly without knowing eps: all derivatives of rsqrt(var + eps)
    depend on var + eps alone."""
    if rms:
        var = rows.square().mean(-1)
        mean = None
    else:
        recomputed_mean = rows.mean(-1)
        var = (rows - recomputed_mean[:, None]).square().mean(-1)
        mean = recomputed_mean - recomputed_mean.detach() + mean
    rstd = torch.rsqrt(var - var.detach() + rstd.to(rows.dtype).reciprocal().square())
    return mean, rstd


def _row_norm_double_backward(ctx, grads, rms):
    """Gradients of (dx, dweight, dbias) w.r.t. (grad_out, input, weight). Outputs the backward
    op was not asked for (empty [0] tensors) pass no gradient."""
    grad_out, input, mean, rstd, weight = ctx.saved_tensors
    grads = [g if wanted else None for g, wanted in zip(grads, ctx.output_mask)]
    normalized_shape = ctx.normalized_shape
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        leaves = [grad_out.detach().requires_grad_(), input.detach().requires_grad_()]
        if weight is not None:
            leaves.append(weight.detach().requires_grad_())
        rows = leaves[1].reshape(rstd.shape[0], -1).to(stats_dtype(input.dtype))
        mean_d, rstd_d = _differentiable_stats(rows, mean, rstd, rms)
        outs = row_norm_bwd_ref(
            leaves[0], leaves[1], normalized_shape, mean_d, rstd_d,
            leaves[2] if weight is not None else None, rms,
        )
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None]
        if not pairs:
            return [None] * len(leaves)
        result = torch.autograd.grad(
            [o for o, _ in pairs], leaves, [g for _, g in pairs],
            create_graph=create_graph, allow_unused=True,
        )
    return list(result)


def _layer_norm_bwd_setup(ctx, inputs, output):
    grad_out, input, normalized_shape, mean, rstd, weight, bias, output_mask = inputs
    ctx.normalized_shape = normalized_shape
    ctx.output_mask = [output_mask[0], output_mask[1] and weight is not None,
                       output_mask[2] and bias is not None]
    ctx.save_for_backward(grad_out, input, mean, rstd, weight)


def _layer_norm_bwd_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    grads = [grad_dx, grad_dweight, grad_dbias]
    g_dy, g_x, *g_w = _row_norm_double_backward(ctx, grads, rms=False)
    return g_dy, g_x, None, None, None, (g_w[0] if g_w else None), None, None


def _rms_norm_bwd_setup(ctx, inputs, output):
    grad_out, input, normalized_shape, rstd, weight, output_mask = inputs
    ctx.normalized_shape = normalized_shape
    ctx.output_mask = [output_mask[0], output_mask[1] and weight is not None, False]
    ctx.save_for_backward(grad_out, input, None, rstd, weight)


def _rms_norm_bwd_backward(ctx, grad_dx, grad_dweight):
    g_dy, g_x, *g_w = _row_norm_double_backward(ctx, [grad_dx, grad_dweight, None], rms=True)
    return g_dy, g_x, None, None, (g_w[0] if g_w else None), None


torch.library.register_autograd(
    "fused_norm::layer_norm_bwd", _layer_norm_bwd_backward, setup_context=_layer_norm_bwd_setup
)
torch.library.register_autograd(
    "fused_norm::rms_norm_bwd", _rms_norm_bwd_backward, setup_context=_rms_norm_bwd_setup
)


# GroupNorm: the forward op's autograd is C++ (csrc/common/norm_autograd.cpp) and calls the
# backward op; the backward op's own backward (double backward) differentiates the
# vector-Jacobian product of the reference forward.


def _group_norm_bwd_setup(ctx, inputs, output):
    grad_out, input, num_groups, mean, rstd, weight, bias, activation, output_mask = inputs
    ctx.num_groups, ctx.activation = num_groups, activation
    ctx.output_mask = [output_mask[0], output_mask[1] and weight is not None,
                       output_mask[2] and bias is not None]
    ctx.save_for_backward(grad_out, input, mean, rstd, weight, bias)


def _group_norm_with_stats(x, num_groups, mean, rstd, weight, bias, activation):
    """act(GroupNorm(x)) with the given [N, G] statistics, in plain torch (differentiable)."""
    dtype = stats_dtype(x.dtype)
    N, C = x.shape[:2]
    groups = x.to(dtype).reshape(N, num_groups, -1)
    z = ((groups - mean[..., None]) * rstd[..., None]).reshape(x.shape)
    shape = [1, C] + [1] * (x.dim() - 2)
    if weight is not None:
        z = z * weight.to(dtype).reshape(shape)
    if bias is not None:
        z = z + bias.to(dtype).reshape(shape)
    return ACTIVATIONS[activation](z)


def _group_norm_bwd_backward(ctx, grad_dx, grad_dweight, grad_dbias):
    """Gradients of (dx, dweight, dbias) w.r.t. (grad_out, input, weight, bias). The backward op
    is the vector-Jacobian product of the forward, so its derivatives are those of the same
    product taken on the differentiable reference, with the saved statistics rebuilt as
    functions of the input (_differentiable_stats: same values, the statistics' derivatives)."""
    grad_out, input, mean, rstd, weight, bias = ctx.saved_tensors
    grads = [g if wanted else None
             for g, wanted in zip((grad_dx, grad_dweight, grad_dbias), ctx.output_mask)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        dy, x, w, b = [t.detach().requires_grad_() if t is not None else None
                       for t in (grad_out, input, weight, bias)]
        rows = x.reshape(mean.numel(), -1).to(stats_dtype(x.dtype))
        mean_d, rstd_d = _differentiable_stats(rows, mean.reshape(-1), rstd.reshape(-1), False)
        y = _group_norm_with_stats(x, ctx.num_groups, mean_d.reshape(mean.shape),
                                   rstd_d.reshape(rstd.shape), w, b, ctx.activation)
        operands = [x, w, b]
        wanted = [t is not None and g is not None for t, g in zip(operands, grads)]
        firsts = torch.autograd.grad(y, [t for t, keep in zip(operands, wanted) if keep],
                                     dy.to(y.dtype), create_graph=True, allow_unused=True)
        pairs = [(f, g.to(f.dtype)) for f, g in zip(firsts, [g for g, keep in zip(grads, wanted)
                                                              if keep]) if f is not None]
        leaves = [t for t in (dy, x, w, b) if t is not None]
        if not pairs:
            result = [None] * len(leaves)
        else:
            result = list(torch.autograd.grad([f for f, _ in pairs], leaves,
                                              [g for _, g in pairs], create_graph=create_graph,
                                              allow_unused=True))
    it = iter(result)
    g_dy, g_x = next(it), next(it)
    g_w = next(it) if weight is not None else None
    g_b = next(it) if bias is not None else None
    cast = [None if g is None else g.to(t.dtype) for g, t in ((g_dy, grad_out), (g_x, input),
                                                              (g_w, weight), (g_b, bias))]
    return cast[0], cast[1], None, None, None, cast[2], cast[3], None, None


torch.library.register_autograd(
    "fused_norm::group_norm_bwd", _group_norm_bwd_backward, setup_context=_group_norm_bwd_setup
)


# BatchNorm: the forward op's autograd is C++ (csrc/common/norm_autograd.cpp) and calls the
# backward op; the backward op's own backward (double backward) differentiates the
# vector-Jacobian product of the reference forward. SyncBatchNorm has its own autograd
# (fused_norm/_batch_norm.py) on the piecewise ops.


def _batch_norm_bwd_setup(ctx, inputs, output):
    grad_out, input, mean, var, weight, bias, relu_output, eps, training, output_mask = inputs
    ctx.eps, ctx.training = eps, training
    ctx.output_mask = [output_mask[0], output_mask[1] and weight is not None,
                       output_mask[2] and bias is not None,
                       output_mask[3] and relu_output is not None]
    ctx.save_for_backward(grad_out, input, mean, var, weight, relu_output)


def _batch_norm_bwd_backward(ctx, grad_dx, grad_dweight, grad_dbias, grad_dresidual):
    """Gradients of (dx, dweight, dbias, dresidual) w.r.t. (grad_out, input, weight): those of
    the vector-Jacobian product of the reference forward. In training the statistics are
    recomputed from the input, so that their derivatives enter. The ReLU enters as the mask of
    its saved output (its second derivative is zero), so the values of bias and residual do not
    matter: the output is linear in them, and zero stand-ins give their gradients."""
    grad_out, input, mean, var, weight, relu_output = ctx.saved_tensors
    grads = [g if wanted else None for g, wanted in
             zip((grad_dx, grad_dweight, grad_dbias, grad_dresidual), ctx.output_mask)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        dy, x, w = [t.detach().requires_grad_() if t is not None else None
                    for t in (grad_out, input, weight)]
        b = (torch.zeros(x.shape[1], dtype=w.dtype if w is not None else x.dtype,
                         device=x.device).requires_grad_() if grads[2] is not None else None)
        residual = torch.zeros_like(x).requires_grad_() if grads[3] is not None else None
        stats = (None, None) if ctx.training else (mean, var)
        y = batch_norm_ref(x, *stats, w, b, ctx.eps, residual)
        if relu_output is not None:
            y = y * (relu_output > 0)
        operands = [x, w, b, residual]
        wanted = [t is not None and g is not None for t, g in zip(operands, grads)]
        firsts = torch.autograd.grad(y, [t for t, keep in zip(operands, wanted) if keep],
                                     dy.to(y.dtype), create_graph=True, allow_unused=True)
        pairs = [(f, g.to(f.dtype)) for f, g in zip(firsts, [g for g, keep in zip(grads, wanted)
                                                              if keep]) if f is not None]
        leaves = [t for t in (dy, x, w) if t is not None]
        if not pairs:
            result = [None] * len(leaves)
        else:
            result = list(torch.autograd.grad([f for f, _ in pairs], leaves,
                                              [g for _, g in pairs], create_graph=create_graph,
                                              allow_unused=True))
    g_dy, g_x = result[0], result[1]
    g_w = result[2] if weight is not None else None
    cast = [None if g is None else g.to(t.dtype) for g, t in ((g_dy, grad_out), (g_x, input),
                                                              (g_w, weight))]
    return cast[0], cast[1], None, None, cast[2], None, None, None, None, None


torch.library.register_autograd(
    "fused_norm::batch_norm_bwd", _batch_norm_bwd_backward, setup_context=_batch_norm_bwd_setup
)


# Softmax: the forward op's autograd is C++ (csrc/common/elementwise_autograd.cpp: the
# backward op on the saved output); the backward op's own backward is written out below in torch
# ops (themselves differentiable, so higher orders work too). With g = grad_out, y = output, v = the gradient of dx, sums over dim:
#   softmax     dx = y * (g - sum(g * y)):  dg = y * (v - sum(v * y))   (the backward op again)
#                                           dy = v * (g - sum(g * y)) - g * sum(v * y)
#   log_softmax dx = g - exp(y) * sum(g):   dg = v - sum(v * exp(y)),  dy = -v * exp(y) * sum(g)


def _softmax_bwd_setup(ctx, inputs, output):
    grad_out, output_fwd, ctx.dim, ctx.log = inputs
    ctx.save_for_backward(grad_out, output_fwd)


def _softmax_bwd_backward(ctx, v):
    g, y = ctx.saved_tensors
    dim = ctx.dim
    if ctx.log:
        exp_y = y.exp()
        grad_g = v - (v * exp_y).sum(dim, keepdim=True)
        grad_y = -v * exp_y * g.sum(dim, keepdim=True)
    else:
        grad_g = ops.softmax_bwd(v, y, dim, False)
        grad_y = (v * (g - (g * y).sum(dim, keepdim=True))
                  - g * (v * y).sum(dim, keepdim=True))
    return grad_g, grad_y, None, None


torch.library.register_autograd(
    "fused_norm::softmax_bwd", _softmax_bwd_backward, setup_context=_softmax_bwd_setup
)


# Gated units: the forward ops' autograd is C++ (csrc/common/elementwise_autograd.cpp: the
# backward ops on the saved inputs); the backward ops' own backward differentiates the reference vector-Jacobian product (da = act'(a) * dy * b, db = act(a) * dy)
# in torch ops.

_GATES = {
    "silu": torch.nn.functional.silu,
    "gelu": torch.nn.functional.gelu,
    "gelu_tanh": lambda z: torch.nn.functional.gelu(z, approximate="tanh"),
}


def _gated_double_backward(activation, grad_out, a, b, grad_da, grad_db):
    """Gradients of (da, db) w.r.t. (grad_out, a, b), given the gradients of da and db."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        dy, a, b = (t.detach().requires_grad_() for t in (grad_out, a, b))
        gate = _GATES[activation](a)
        (da,) = torch.autograd.grad(gate, a, dy * b, create_graph=True)
        db = gate * dy
        pairs = [(o, g) for o, g in ((da, grad_da), (db, grad_db)) if g is not None]
        return torch.autograd.grad([o for o, _ in pairs], (dy, a, b), [g for _, g in pairs],
                                   create_graph=create_graph, allow_unused=True,
                                   materialize_grads=True)


def _gated_chunk_bwd_setup(ctx, inputs, output):
    grad_out, input, ctx.activation = inputs
    ctx.save_for_backward(grad_out, input)


def _gated_chunk_bwd_backward(ctx, grad_dx):
    grad_out, input = ctx.saved_tensors
    a, b = input.chunk(2, -1)
    grad_da, grad_db = grad_dx.chunk(2, -1)
    g_dy, g_a, g_b = _gated_double_backward(ctx.activation, grad_out, a, b, grad_da, grad_db)
    return g_dy, torch.cat([g_a, g_b], -1), None


def _gated_bwd_setup(ctx, inputs, output):
    grad_out, a, b, ctx.activation = inputs
    ctx.save_for_backward(grad_out, a, b)


def _gated_bwd_backward(ctx, grad_da, grad_db):
    grad_out, a, b = ctx.saved_tensors
    g_dy, g_a, g_b = _gated_double_backward(ctx.activation, grad_out, a, b, grad_da, grad_db)
    return g_dy, g_a, g_b, None


torch.library.register_autograd(
    "fused_norm::gated_chunk_bwd", _gated_chunk_bwd_backward, setup_context=_gated_chunk_bwd_setup
)
torch.library.register_autograd(
    "fused_norm::gated_bwd", _gated_bwd_backward, setup_context=_gated_bwd_setup
)


# ---------------------------------------------------------------------------------------------
# Standalone activations, RReLU with drawn slopes, PReLU.
#
# Outputs follow the C++ layer (csrc/common/activation.cpp): the elementwise ops give their
# results the strides of a dense input and empty_like's layout otherwise, exactly what
# torch.empty_like does; PReLU with a slope per channel gives the group-norm layout.
# activation_fwd's autograd is C++ (csrc/common/elementwise_autograd.cpp).


@_register_fake("fused_norm::activation_fwd")
def _activation_fwd_fake(input, kind, args):
    return torch.empty_like(input)


@_register_fake("fused_norm::activation_bwd")
def _activation_bwd_fake(grad_out, saved, kind, args):
    return torch.empty_like(saved)


@_register_fake("fused_norm::rrelu_with_noise_fwd")
def _rrelu_with_noise_fwd_fake(input, noise):
    return torch.empty_like(input), torch.empty_like(input)


@_register_fake("fused_norm::rrelu_with_noise_bwd")
def _rrelu_with_noise_bwd_fake(grad_out, slope):
    return torch.empty_like(slope)


def _prelu_layout_empty(input, weight):
    return torch.empty_like(input) if weight.numel() == 1 else _layout_empty(input)


@_register_fake("fused_norm::prelu_fwd")
def _prelu_fwd_fake(input, weight):
    return _prelu_layout_empty(input, weight)


@_register_fake("fused_norm::prelu_bwd")
def _prelu_bwd_fake(grad_out, input, weight, output_mask):
    return (_prelu_layout_empty(input, weight) if output_mask[0] else _unwanted(input),
            torch.empty_like(weight, memory_format=torch.contiguous_format) if output_mask[1]
            else _unwanted(input))


def _activation_bwd_setup(ctx, inputs, output):
    grad_out, saved, kind, args = inputs
    ctx.kind, ctx.args = kind, args
    ctx.save_for_backward(grad_out, saved)


def _activation_bwd_ref(dy, saved, kind, args):
    """The backward op's value as a differentiable function of (dy, saved)."""
    if kind == "sigmoid":
        return dy * (1 - saved) * saved
    if kind == "tanh":
        return dy * (1 - saved * saved)
    (dx,) = torch.autograd.grad(activation_ref(saved, kind, args), saved, dy, create_graph=True)
    return dx


# Kinds whose derivative is piecewise constant (torch defines no derivative for some of their
# backward ops, e.g. hardsigmoid_backward).
_PIECEWISE_LINEAR = frozenset({"relu", "leaky_relu", "hardtanh", "hardsigmoid"})


def _activation_bwd_backward(ctx, grad_dx):
    """Double backward: dx = dy * act'(saved) is linear in dy (its dy-gradient is the backward op
    itself) and its saved-gradient is differentiated from the reference formula."""
    grad_out, saved = ctx.saved_tensors
    grad_dy = grad_saved = None
    if ctx.needs_input_grad[0]:
        grad_dy = ops.activation_bwd(grad_dx, saved, ctx.kind, ctx.args)
    if ctx.needs_input_grad[1] and ctx.kind in _PIECEWISE_LINEAR:
        grad_saved = torch.zeros_like(saved)  # act' is piecewise constant: act'' = 0 a.e.
    elif ctx.needs_input_grad[1]:
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            dy = grad_out if create_graph else grad_out.detach()
            s = saved.detach().requires_grad_()
            dx = _activation_bwd_ref(dy, s, ctx.kind, ctx.args)
            (grad_saved,) = torch.autograd.grad(dx, s, grad_dx, create_graph=create_graph)
    return grad_dy, grad_saved, None, None


torch.library.register_autograd(
    "fused_norm::activation_bwd", _activation_bwd_backward, setup_context=_activation_bwd_setup
)


def _rrelu_fwd_setup(ctx, inputs, output):
    slope = output[1]
    ctx.mark_non_differentiable(slope)
    # The slope gets no gradient: without this, autograd would fill a zero tensor of the input's
    # size for it on every backward (more than the backward itself).
    ctx.set_materialize_grads(False)
    ctx.save_for_backward(slope)


def _rrelu_fwd_backward(ctx, grad, _grad_slope):
    if grad is None:  # grads are not materialized (above)
        return None, None
    (slope,) = ctx.saved_tensors
    return ops.rrelu_with_noise_bwd(grad, slope), None


def _rrelu_bwd_setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[1])


def _rrelu_bwd_backward(ctx, grad_dx):
    """dx = dy * slope is linear in dy: its dy-gradient is the backward op again. The slope is
    not differentiable (piecewise constant in x)."""
    (slope,) = ctx.saved_tensors
    return ops.rrelu_with_noise_bwd(grad_dx, slope), None


torch.library.register_autograd(
    "fused_norm::rrelu_with_noise_fwd", _rrelu_fwd_backward, setup_context=_rrelu_fwd_setup
)
torch.library.register_autograd(
    "fused_norm::rrelu_with_noise_bwd", _rrelu_bwd_backward, setup_context=_rrelu_bwd_setup
)


def _prelu_fwd_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _prelu_fwd_backward(ctx, grad):
    input, weight = ctx.saved_tensors
    mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1]]
    dx, dweight = ops.prelu_bwd(grad, input, weight, mask)
    return dx if mask[0] else None, dweight if mask[1] else None


def _prelu_bwd_setup(ctx, inputs, output):
    grad_out, input, weight, output_mask = inputs
    ctx.output_mask = list(output_mask)
    ctx.save_for_backward(grad_out, input, weight)


def _prelu_bwd_backward(ctx, grad_dx, grad_dweight):
    """Double backward through torch's prelu: the vector-Jacobian product of the reference,
    differentiated once more."""
    grad_out, input, weight = ctx.saved_tensors
    grads = [g if wanted else None for g, wanted in zip((grad_dx, grad_dweight), ctx.output_mask)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        dy, x, w = [t.detach().requires_grad_() for t in (grad_out, input, weight)]
        y = torch.nn.functional.prelu(x, w)
        operands = [(t, g) for t, g in zip((x, w), grads) if g is not None]
        if not operands:
            return None, None, None, None
        firsts = torch.autograd.grad(y, [t for t, _ in operands], dy, create_graph=True)
        g_dy, g_x, g_w = torch.autograd.grad(
            firsts, [dy, x, w], [g.to(f.dtype) for f, (_, g) in zip(firsts, operands)],
            create_graph=create_graph, allow_unused=True)
    return g_dy, g_x, g_w, None


torch.library.register_autograd(
    "fused_norm::prelu_fwd", _prelu_fwd_backward, setup_context=_prelu_fwd_setup
)
torch.library.register_autograd(
    "fused_norm::prelu_bwd", _prelu_bwd_backward, setup_context=_prelu_bwd_setup
)


# ---------------------------------------------------------------------------------------------
# Fused add + norm: h = dropout(input) + alpha * residual, y = norm(h). Fakes, and the double
# backward: the forward op's autograd is C++ (csrc/common/add_norm_autograd.cpp: it saves h, or y
# in the memory-efficient mode, or the input itself when h is the input, and calls add_norm_bwd);
# add_norm_bwd's own backward differentiates the reference formula.


def _add_norm_dtypes(input, residual, residual_dtype, out_dtype):
    if residual_dtype is None:
        residual_dtype = residual.dtype if residual is not None else input.dtype
    return residual_dtype, out_dtype if out_dtype is not None else input.dtype


@_register_fake("fused_norm::add_norm_fwd")
def _add_norm_fwd_fake(input, residual, normalized_shape, weight, bias, eps, rms, alpha,
                       dropout_p, dropout_seed, residual_dtype, out_dtype, zero_centered_weight,
                       write_sum, memory_efficient):
    M = _num_rows(input, normalized_shape)
    stats = stats_dtype(input.dtype)
    residual_dtype, out_dtype = _add_norm_dtypes(input, residual, residual_dtype, out_dtype)
    return (
        input.new_empty(input.shape, dtype=out_dtype),
        input.new_empty(input.shape if write_sum else (0,), dtype=residual_dtype),
        input.new_empty((0 if rms else M,), dtype=stats),
        input.new_empty((M,), dtype=stats),
    )


@_register_fake("fused_norm::add_norm_bwd")
def _add_norm_bwd_fake(grad_out, grad_sum, saved, normalized_shape, mean, rstd, weight, bias, rms,
                       alpha, dropout_p, dropout_seed, zero_centered_weight, saved_is_output,
                       input_dtype, residual_dtype, output_mask):
    def full(wanted, dtype):
        return saved.new_empty(saved.shape, dtype=dtype) if wanted else _unwanted(saved)
    return (
        full(output_mask[0], input_dtype),
        full(output_mask[1], residual_dtype),
        _param_grad_fake(output_mask[2], weight, saved),
        _param_grad_fake(output_mask[3], bias, saved),
    )


def _add_norm_bwd_setup(ctx, inputs, output):
    (grad_out, grad_sum, saved, normalized_shape, mean, rstd, weight, bias, rms, alpha, dropout_p,
     dropout_seed, zero_centered_weight, saved_is_output, input_dtype, residual_dtype,
     output_mask) = inputs
    ctx.normalized_shape = normalized_shape
    ctx.options = (rms, alpha, dropout_p, zero_centered_weight, input_dtype, residual_dtype)
    ctx.saved_is_output = saved_is_output
    ctx.output_mask = [output_mask[0], output_mask[1], output_mask[2] and weight is not None,
                       output_mask[3] and bias is not None]
    ctx.save_for_backward(grad_out, grad_sum, saved, mean, rstd, weight, dropout_seed)


def _dropout_multipliers(like, normalized_shape, rms, dropout_p, seed, dtype):
    """The multipliers (0 or 1 / (1 - p)) the kernels' dropout applied: dropout(ones), from the
    forward op itself with the same seed."""
    ones = torch.ones(like.shape, dtype=dtype, device=like.device)
    return ops.add_norm_fwd(ones, None, normalized_shape, None, None, 1.0, rms, 1.0, dropout_p,
                            seed, dtype, None, False, True, False)[1]


def _add_norm_bwd_backward(ctx, g_d_input, g_d_residual, g_d_weight, g_d_bias):
    """Gradients of (d_input, d_residual, d_weight, d_bias) w.r.t. (grad_out, grad_sum, h,
    weight): d_input = mult * dh, d_residual = alpha * dh, dh = norm_bwd(grad_out, h) + grad_sum,
    differentiated on the reference formula with the statistics as functions of h."""
    if ctx.saved_is_output:
        raise NotImplementedError(
            "fused_norm: double backward of add_layer_norm / add_rms_norm is not supported with "
            "memory_efficient=True (the backward works from y, not from its input)")
    grad_out, grad_sum, h, mean, rstd, weight, seed = ctx.saved_tensors
    rms, alpha, dropout_p, zero_centered, input_dtype, residual_dtype = ctx.options
    grads = [g if wanted else None for g, wanted in
             zip((g_d_input, g_d_residual, g_d_weight, g_d_bias), ctx.output_mask)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        dy = grad_out.detach().requires_grad_()
        hh = h.detach().requires_grad_()
        gs = grad_sum.detach().requires_grad_() if grad_sum is not None else None
        w = weight.detach().requires_grad_() if weight is not None else None
        rows = hh.reshape(rstd.shape[0], -1).to(stats_dtype(input_dtype))
        mean_d, rstd_d = _differentiable_stats(rows, mean, rstd, rms)
        w_applied = w + 1 if (w is not None and zero_centered) else w
        dh, d_w, d_b = row_norm_bwd_ref(dy, hh, ctx.normalized_shape, mean_d, rstd_d, w_applied,
                                        rms)
        if gs is not None:
            dh = dh + gs
        mult = (_dropout_multipliers(h, ctx.normalized_shape, rms, dropout_p, seed, dh.dtype)
                if dropout_p > 0 else 1)
        outs = [(dh * mult).to(input_dtype), alpha * dh, d_w, None if rms else d_b]
        leaves = [t for t in (dy, gs, hh, w) if t is not None]
        pairs = [(o, g) for o, g in zip(outs, grads) if o is not None and g is not None]
        result = (torch.autograd.grad([o for o, _ in pairs], leaves,
                                      [g.to(o.dtype) for o, g in pairs],
                                      create_graph=create_graph, allow_unused=True)
                  if pairs else [None] * len(leaves))
    it = iter(result)
    g_dy, g_gs, g_h = next(it), (next(it) if gs is not None else None), next(it)
    g_w = next(it) if w is not None else None
    return (g_dy, g_gs, g_h, None, None, None, g_w) + (None,) * 10


torch.library.register_autograd(
    "fused_norm::add_norm_bwd", _add_norm_bwd_backward, setup_context=_add_norm_bwd_setup
)


# ---------------------------------------------------------------------------------------------
# DyT. The output (and dx) is contiguous in the input's dtype; dalpha, dweight and dbias have
# their parameter's shape and dtype. dyt_fwd's autograd is C++ (csrc/common/elementwise_autograd.cpp:
# the backward op on the saved inputs); the backward op's own backward differentiates its
# formula written in torch ops (reference.dyt_bwd_ref).


@_register_fake("fused_norm::dyt_fwd")
def _dyt_fwd_fake(input, alpha, weight, bias):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


@_register_fake("fused_norm::dyt_bwd")
def _dyt_bwd_fake(grad_out, input, alpha, weight, bias, output_mask):
    return (
        torch.empty_like(input, memory_format=torch.contiguous_format) if output_mask[0]
        else _unwanted(input),
        torch.empty_like(alpha, memory_format=torch.contiguous_format) if output_mask[1]
        else _unwanted(input),
        _param_grad_fake(output_mask[2], weight, input),
        _param_grad_fake(output_mask[3], bias, input),
    )


def _dyt_bwd_setup(ctx, inputs, output):
    grad_out, input, alpha, weight, bias, output_mask = inputs
    ctx.output_mask = [output_mask[0], output_mask[1], output_mask[2] and weight is not None,
                       output_mask[3] and bias is not None]
    param = weight if weight is not None else bias
    ctx.n = param.numel() if param is not None else 1
    ctx.save_for_backward(grad_out, input, alpha, weight)


def _dyt_bwd_backward(ctx, grad_dx, grad_dalpha, grad_dweight, grad_dbias):
    """Gradients of (dx, dalpha, dweight, dbias) w.r.t. (grad_out, input, alpha, weight); the
    backward does not depend on bias."""
    grad_out, input, alpha, weight = ctx.saved_tensors
    grads = [g if wanted else None for g, wanted in
             zip((grad_dx, grad_dalpha, grad_dweight, grad_dbias), ctx.output_mask)]
    create_graph = torch.is_grad_enabled()
    leaves_in = [t for t in (grad_out, input, alpha, weight) if t is not None]
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_() for t in leaves_in]
        dy, x, a = leaves[:3]
        w = leaves[3] if weight is not None else None
        outputs = dyt_bwd_ref(dy, x, a, w, ctx.n)
        pairs = [(o, g.reshape(o.shape).to(o.dtype)) for o, g in zip(outputs, grads)
                 if g is not None]
        if pairs:
            result = torch.autograd.grad([o for o, _ in pairs], leaves, [g for _, g in pairs],
                                         create_graph=create_graph, allow_unused=True)
        else:
            result = [None] * len(leaves)
    result = [None if r is None else r.to(t.dtype) for r, t in zip(result, leaves_in)]
    g_dy, g_x, g_alpha = result[:3]
    g_w = result[3] if weight is not None else None
    return g_dy, g_x, g_alpha, g_w, None, None


torch.library.register_autograd(
    "fused_norm::dyt_bwd", _dyt_bwd_backward, setup_context=_dyt_bwd_setup
)


# ---------------------------------------------------------------------------------------------
# Autocast: the same policy as torch's own op. Under CUDA autocast torch runs layer_norm (and,
# from torch 2.13, rms_norm), group_norm, softmax and log_softmax in float32; under CPU autocast
# it leaves them in the input dtype.


def _torch_autocasts(aten_op, dispatch_key):
    return torch._C._dispatch_has_kernel_for_dispatch_key(aten_op, dispatch_key)


_AUTOCAST_KEYS = (("cuda", "AutocastCUDA"), ("cpu", "AutocastCPU"))


for _ours, _theirs in (("layer_norm_fwd", "aten::layer_norm"), ("rms_norm_fwd", "aten::rms_norm"),
                       ("add_norm_fwd", "aten::layer_norm"),
                       ("group_norm_fwd", "aten::group_norm"),
                       ("softmax_fwd", "aten::softmax.int")):
    for _device, _key in _AUTOCAST_KEYS:
        if _torch_autocasts(_theirs, _key):
            torch.library.register_autocast(f"fused_norm::{_ours}", _device, torch.float32)


# Two torch functions whose autocast policy sits outside what register_autocast expresses: torch
# runs prelu in the autocast region's own (lower) precision, on CPU and CUDA, and softplus in
# float32 on CUDA. prelu and softplus share fused_norm ops with other functions, so these
# functions cast their inputs themselves, through autocast_inputs.
_AUTOCAST_POLICIES = frozenset(
    (aten_op, device)
    for aten_op in ("aten::prelu", "aten::softplus")
    for device, key in _AUTOCAST_KEYS
    if _torch_autocasts(aten_op, key))


def autocast_inputs(aten_op, to_float32, *tensors):
    """tensors as torch's autocast hands them to aten_op: inside an autocast region of their
    device type, where torch has a policy for aten_op, the floating-point tensors but float64
    ones go to float32 (to_float32) or to the region's dtype; otherwise unchanged."""
    device = tensors[0].device.type
    if (aten_op, device) not in _AUTOCAST_POLICIES or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.float32 if to_float32 else torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# ---------------------------------------------------------------------------------------------
# contiguous_copy: a copy, so the gradient passes through unchanged, as through torch's
# Tensor.contiguous().


@_register_fake("fused_norm::contiguous_copy")
def _contiguous_copy_fake(input):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _contiguous_copy_backward(ctx, grad):
    return grad


torch.library.register_autograd(
    "fused_norm::contiguous_copy", _contiguous_copy_backward,
    setup_context=lambda ctx, inputs, output: None)
