"""BatchNorm's Python entry point, and SyncBatchNorm's autograd and running statistics.

BatchNorm is one op, batch_norm_fwd (statistics, running-statistics update and output), whose
autograd is C++ (csrc/common/norm_autograd.cpp). SyncBatchNorm is built here from the C++ pieces
(csrc/registration.cpp): batch statistics, the elementwise forward with its epilogue, the
backward's per-channel reduction and its elementwise pass, with the statistics and the backward
sums combined across processes between them (one collective each way). Those collectives are
torch.distributed calls on a Python process group, which a C++ op cannot make; they cost
milliseconds, so the Python autograd around them costs nothing that matters.
"""

import torch

from ._arguments import torch_bool, torch_float
from ._ops import defer_to_torch, ops


def batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
               residual=None, relu=False):
    """act(bn(input) + residual), act ReLU or none; running statistics updated in training.
    Under a torch.func transform or forward-mode AD, and for input our kernels do not take
    (_ops.defer_to_torch), torch's batch_norm, add and relu."""
    if defer_to_torch(input):
        y = torch.nn.functional.batch_norm(input, running_mean, running_var, weight, bias,
                                           training, momentum, eps)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if relu else y
    torch_bool("batch_norm", "training", 6, training)
    torch_float("batch_norm", "momentum", 7, momentum)
    torch_float("batch_norm", "eps", 8, eps)
    check_running_stats(running_mean, running_var)
    if eps < 0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
    return ops.batch_norm_fwd(input, weight, bias, residual, running_mean, running_var, training,
                              momentum, eps, relu)[0]


def check_running_stats(running_mean, running_var):
    """torch's checks of the running statistics: both or neither, and no autograd on them (they
    are updated in place, not differentiated)."""
    if (running_mean is None) != (running_var is None):
        raise ValueError(
            "running_mean and running_var must either both be None or neither be None")
    for name, stat in (("running_mean", running_mean), ("running_var", running_var)):
        if stat is not None and stat.requires_grad:
            raise RuntimeError(
                f"The function 'batch_norm' is not differentiable with respect to argument "
                f"'{name}'. This input cannot have requires_grad True.")


def check_batch_size(input):
    """torch's check: batch statistics need more than one value per channel."""
    values = input.size(0)
    for size in input.shape[2:]:
        values *= size
    if values == 1:
        raise ValueError(
            f"Expected more than 1 value per channel when training, got input size {input.size()}"
        )


def check_eps(eps):
    if eps <= 0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")


def update_running_stats(running_mean, running_var, mean, var, count, momentum):
    """torch's update: the running variance takes the unbiased batch variance. An empty batch
    leaves the running statistics as they are (torch's kernels do the same). No autograd is
    involved: the statistics come from a detached input and the buffers need no grad."""
    if count == 0:
        return
    unbiased = var * (count / max(count - 1, 1))
    if running_mean is not None:
        running_mean.lerp_(mean if mean.dtype == running_mean.dtype
                           else mean.to(running_mean.dtype), momentum)
    if running_var is not None:
        running_var.lerp_(unbiased if unbiased.dtype == running_var.dtype
                          else unbiased.to(running_var.dtype), momentum)


class SyncBatchNormFunction(torch.autograd.Function):
    """y = act(bn(input; mean, var) + residual) in training, with the batch statistics of all
    processes of `process_group` (`count` elements per channel in all) computed outside
    (detached); the backward differentiates through them."""

    @staticmethod
    def forward(ctx, input, weight, bias, residual, mean, var, eps, relu, count, process_group):
        y = ops.batch_norm_elemt(input, mean, var, weight, bias, residual, eps, relu)
        ctx.save_for_backward(input, weight, bias, mean, var, y if relu else None)
        ctx.eps, ctx.count, ctx.process_group = eps, count, process_group
        return y

    @staticmethod
    def backward(ctx, grad_y):
        if torch.is_grad_enabled():
            raise NotImplementedError(
                "SyncBatchNorm does not support double backward (create_graph=True)")
        input, weight, bias, mean, var, relu_output = ctx.saved_tensors
        need_input, need_weight, need_bias, need_residual = ctx.needs_input_grad[:4]
        grad_input = grad_weight = grad_bias = grad_residual = None
        if need_input or need_weight or need_bias:
            sum_dy, sum_dy_xmu, masked = ops.batch_norm_bwd_reduce(
                grad_y, input, mean, relu_output, need_residual)
            if need_residual and relu_output is not None:
                grad_residual = masked
            # Weight and bias gradients are this process's own (DDP averages them across
            # processes like any parameter's); dx needs the sums of the whole batch.
            if need_weight:
                grad_weight = (sum_dy_xmu * torch.rsqrt(var.to(sum_dy.dtype) + ctx.eps)).to(
                    weight.dtype)
            if need_bias:
                grad_bias = sum_dy.to(bias.dtype)
            if need_input:
                sum_dy, sum_dy_xmu = _all_reduce_sums(sum_dy, sum_dy_xmu, ctx.process_group)
                grad_input = ops.batch_norm_bwd_elemt(
                    grad_y, input, mean, var, weight, relu_output, sum_dy, sum_dy_xmu, ctx.eps,
                    ctx.count)
        if need_residual and grad_residual is None:
            grad_residual = (
                grad_y if relu_output is None else grad_y.masked_fill(relu_output <= 0, 0))
        return (grad_input, grad_weight, grad_bias, grad_residual) + (None,) * 6


def _all_reduce_sums(sum_dy, sum_dy_xmu, process_group):
    import torch.distributed as dist

    both = torch.cat([sum_dy, sum_dy_xmu])
    dist.all_reduce(both, group=process_group)
    return both.chunk(2)


def sync_batch_norm(input, running_mean, running_var, weight, bias, momentum, eps, residual,
                    relu, process_group):
    """SyncBatchNorm in training over `process_group`: BatchNorm on the concatenated batch of
    all its processes."""
    check_batch_size(input)
    check_eps(eps)
    mean, var = ops.batch_norm_stats(input.detach())
    count = input.numel() // input.size(1) if input.size(1) else 0
    mean, var, count = _gather_stats(mean, var, count, process_group)
    update_running_stats(running_mean, running_var, mean, var, count, momentum)
    return SyncBatchNormFunction.apply(input, weight, bias, residual, mean, var, eps, relu,
                                       count, process_group)


def _gather_stats(mean, var, count, process_group):
    """Every process's (mean, var, count) in one all_gather, merged in rank order with Chan's
    formula, in float64. Processes with an empty batch (count 0, NaN statistics) contribute
    nothing."""
    import torch.distributed as dist

    local = torch.cat([mean.double(), var.double(), mean.new_full((1,), count, dtype=torch.float64)])
    world = dist.get_world_size(process_group)
    everyone = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(everyone, local, group=process_group)
    C = mean.numel()
    stacked = torch.stack(everyone)  # [world, 2C + 1]
    counts = stacked[:, 2 * C:]
    present = counts > 0
    means = torch.where(present, stacked[:, :C], 0.0)
    variances = torch.where(present, stacked[:, C:2 * C], 0.0)
    total = counts.sum()
    if total == 0:
        return mean, var, 0
    global_mean = (counts * means).sum(0) / total
    m2 = (counts * (variances + (means - global_mean).square())).sum(0)
    return (global_mean.to(mean.dtype), (m2 / total).to(var.dtype), int(round(total.item())))
