"""BatchNorm's autograd and running statistics, shared by batch_norm, its fused forms and
SyncBatchNorm.

The C++ ops are pieces (csrc/registration.cpp): batch statistics, the elementwise forward with
its epilogue, the backward's per-channel reduction and its elementwise pass. BatchNorm is
stats -> elemt forward and reduce -> elemt backward; SyncBatchNorm combines the statistics and
the backward sums across processes between the pieces (one collective each way).
"""

import torch

from ._ops import ops
from .reference import batch_norm_ref


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


class BatchNormFunction(torch.autograd.Function):
    """y = act(bn(input; mean, var) + residual) with statistics computed outside (detached).

    In training the statistics are the batch's (gathered across `process_group` for
    SyncBatchNorm, `count` elements per channel in all); the backward then differentiates through
    them. In eval they are the running statistics, constants.
    """

    @staticmethod
    def forward(ctx, input, weight, bias, residual, mean, var, eps, relu, training, count,
                process_group):
        # A channels_last output comes back as a permuted view of the buffer the kernel wrote,
        # and autograd forbids in-place ops on a Function's output that is a view (a
        # ReLU(inplace=True) after the norm, as in ResNet); detach() is the same memory as a
        # tensor of its own.
        y = ops.batch_norm_elemt(input, mean, var, weight, bias, residual, eps, relu).detach()
        ctx.save_for_backward(input, weight, bias, mean, var, y if relu else None)
        ctx.eps, ctx.relu, ctx.training, ctx.count = eps, relu, training, count
        ctx.process_group = process_group
        return y

    @staticmethod
    def backward(ctx, grad_y):
        input, weight, bias, mean, var, relu_output = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _differentiable_backward(ctx, grad_y)
        need_input, need_weight, need_bias, need_residual = ctx.needs_input_grad[:4]
        training = ctx.training
        grad_input = grad_weight = grad_bias = grad_residual = None
        want_sums = (training and need_input) or need_weight or need_bias
        if want_sums:
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
            if training and need_input and ctx.process_group is not None:
                sum_dy, sum_dy_xmu = _all_reduce_sums(sum_dy, sum_dy_xmu, ctx.process_group)
        if need_residual and grad_residual is None:
            grad_residual = (
                grad_y if relu_output is None else grad_y.masked_fill(relu_output <= 0, 0))
        if need_input:
            sums = (sum_dy, sum_dy_xmu) if training else (None, None)
            grad_input = ops.batch_norm_bwd_elemt(
                grad_y, input, mean, var, weight, relu_output, sums[0], sums[1], ctx.eps,
                ctx.count if training else 1)
        return (grad_input, grad_weight, grad_bias, grad_residual) + (None,) * 7


def _all_reduce_sums(sum_dy, sum_dy_xmu, process_group):
    import torch.distributed as dist

    both = torch.cat([sum_dy, sum_dy_xmu])
    dist.all_reduce(both, group=process_group)
    return both.chunk(2)


def _differentiable_backward(ctx, grad_y):
    """The backward in plain torch ops, so that it can itself be differentiated (double
    backward): the forward is re-run on the reference math and differentiated. ReLU enters as
    the mask of the saved output (its second derivative is zero), so the residual's value is not
    needed: the output is linear in it."""
    if ctx.process_group is not None:
        raise NotImplementedError(
            "SyncBatchNorm does not support double backward (create_graph=True)")
    input, weight, bias, mean, var, relu_output = ctx.saved_tensors
    needs = ctx.needs_input_grad[:4]
    with torch.enable_grad():
        # The saved tensors themselves (not detached copies), so that the gradients returned
        # stay connected to the caller's graph. The residual's value does not matter: a zero
        # stand-in whose gradient is grad_y masked like the output's.
        residual = torch.zeros_like(input).requires_grad_() if needs[3] else None
        operands = [input, weight, bias, residual]
        stats = (None, None) if ctx.training else (mean, var)
        y = batch_norm_ref(input, stats[0], stats[1], weight, bias, ctx.eps, residual)
        if relu_output is not None:
            y = y * (relu_output <= 0).logical_not()
        wanted = [t for t, need in zip(operands, needs) if t is not None and need]
        grads = iter(torch.autograd.grad(y, wanted, grad_y, create_graph=True, allow_unused=True))
    result = [next(grads) if t is not None and need else None
              for t, need in zip(operands, needs)]
    return tuple(result) + (None,) * 7


def batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps,
               residual=None, relu=False, process_group=None, gather_stats=None):
    """The one BatchNorm path: checks, statistics, running-stat update, autograd Function.

    gather_stats(mean, var, count) -> (mean, var, count) combines the local statistics across
    processes (SyncBatchNorm); None for plain BatchNorm.
    """
    if training:
        check_batch_size(input)
        check_eps(eps)
        mean, var = ops.batch_norm_stats(input.detach())
        count = input.numel() // input.size(1) if input.size(1) else 0
        if gather_stats is not None:
            mean, var, count = gather_stats(mean, var, count)
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
    else:
        if running_mean is None or running_var is None:
            raise RuntimeError("running_mean must be defined in evaluation mode")
        mean, var, count = running_mean, running_var, 0
    return BatchNormFunction.apply(input, weight, bias, residual, mean, var, eps, relu,
                                   training, count, process_group)


def gather_stats_across(process_group):
    """gather_stats for batch_norm: every process's (mean, var, count) in one all_gather, merged
    in rank order with Chan's formula, in float64. Processes with an empty batch (count 0, NaN
    statistics) contribute nothing."""
    import torch.distributed as dist

    def gather(mean, var, count):
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
        return (global_mean.to(mean.dtype), (m2 / total).to(var.dtype),
                int(round(total.item())))

    return gather
