"""The elementwise activations on fused_norm's kernels: functions with torch.nn.functional's
signatures and defaults, and modules subclassing torch.nn's (same constructors, repr,
state_dict; only forward differs).

Every function runs fused_norm::activation_fwd (or PReLU's / RReLU's ops) on float16, bfloat16,
float32 and float64 input. Other dtypes go to torch's own function, so that integer and bool
input behaves exactly as torch (relu and hardtanh accept it, sigmoid and tanh promote it, the
rest raise NotImplementedError). `inplace=True` computes out of place and copies the result into
the input (see _apply): the same tensor object comes back, and autograd's rules for in-place
ops (the error on a leaf that requires grad, version counters) are torch's own.
"""

import math

import torch
import torch.nn.functional as TF

from . import _ops  # registers fakes and autograd; autocast_inputs
from ._arguments import torch_float

ops = torch.ops.fused_norm

__all__ = [
    "celu", "elu", "gelu", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu", "mish", "prelu",
    "relu", "relu6", "rrelu", "selu", "sigmoid", "silu", "softplus", "tanh",
    "CELU", "ELU", "GELU", "Hardsigmoid", "Hardswish", "Hardtanh", "LeakyReLU", "Mish", "PReLU",
    "ReLU", "ReLU6", "RReLU", "SELU", "Sigmoid", "SiLU", "Softplus", "Tanh",
]

_KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# torch's SELU constants (torch/csrc/api and ATen's Activation.cpp).
_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _ours(input):
    """Whether our kernels take the call; else torch's own function does: for dtypes they do not
    have, for other input they do not take (nested, sparse, quantized, DTensor), and under a
    torch.func transform or forward-mode AD (_ops.defer_to_torch)."""
    return not _ops.defer_to_torch(input) and input.dtype in _KERNEL_DTYPES


def _apply(input, inplace, compute):
    """compute(input), or, in place, the same values written into input. Under autograd the
    kernel reads a copy: the op's backward saves its input, which the in-place write would
    otherwise change under it."""
    if not inplace:
        return compute(input)
    source = input.clone() if torch.is_grad_enabled() and input.requires_grad else input
    return input.copy_(compute(source))


def _scalar(function, name, position, value):
    """A number argument as a float for the op, with torch's TypeError for anything else."""
    return float(torch_float(function, name, position, value))


def _act(input, inplace, kind, args=()):
    return _apply(input, inplace, lambda x: ops.activation_fwd(x, kind, list(args)))


def relu(input, inplace=False):
    if not _ours(input):
        return TF.relu(input, inplace=inplace)
    return _act(input, inplace, "relu")


def relu6(input, inplace=False):
    if not _ours(input):
        return TF.relu6(input, inplace=inplace)
    # torch's relu6 is hardtanh(0, 6), gradient and NaN handling included.
    return _act(input, inplace, "hardtanh", (0.0, 6.0))


def leaky_relu(input, negative_slope=0.01, inplace=False):
    if not _ours(input):
        return TF.leaky_relu(input, negative_slope, inplace)
    slope = _scalar("leaky_relu", "negative_slope", 2, negative_slope)
    return _act(input, inplace, "leaky_relu", (slope,))


def elu(input, alpha=1.0, inplace=False):
    if not _ours(input):
        return TF.elu(input, alpha, inplace)
    return _act(input, inplace, "elu", (_scalar("elu", "alpha", 2, alpha), 1.0, 1.0))


def selu(input, inplace=False):
    if not _ours(input):
        return TF.selu(input, inplace)
    return _act(input, inplace, "elu", (_SELU_ALPHA, _SELU_SCALE, 1.0))


def celu(input, alpha=1.0, inplace=False):
    if not _ours(input) or alpha == 0:
        # torch's error for alpha == 0 (and its behaviour for other dtypes).
        return TF.celu(input, alpha, inplace)
    alpha = _scalar("celu", "alpha", 2, alpha)
    return _act(input, inplace, "elu", (alpha, 1.0, 1.0 / alpha))


def gelu(input, *, approximate="none"):
    if not isinstance(approximate, str):
        raise TypeError(
            f"gelu(): argument 'approximate' must be str, not {type(approximate).__name__}")
    if approximate not in ("none", "tanh"):
        raise RuntimeError("approximate argument must be either none or tanh.")
    if not _ours(input):
        return TF.gelu(input, approximate=approximate)
    return ops.activation_fwd(input, "gelu" if approximate == "none" else "gelu_tanh", [])


def silu(input, inplace=False):
    if not _ours(input):
        return TF.silu(input, inplace)
    return _act(input, inplace, "silu")


def mish(input, inplace=False):
    if not _ours(input):
        return TF.mish(input, inplace)
    return _act(input, inplace, "mish")


def hardswish(input, inplace=False):
    if not _ours(input):
        return TF.hardswish(input, inplace)
    return _act(input, inplace, "hardswish")


def hardsigmoid(input, inplace=False):
    if not _ours(input):
        return TF.hardsigmoid(input, inplace)
    return _act(input, inplace, "hardsigmoid")


def hardtanh(input, min_val=-1.0, max_val=1.0, inplace=False):
    if not _ours(input) or not min_val <= max_val:
        # torch's error for min_val > max_val, its NaN output for a NaN bound (and its behaviour
        # for other dtypes).
        return TF.hardtanh(input, min_val, max_val, inplace)
    return _act(input, inplace, "hardtanh", (_scalar("hardtanh", "min_val", 2, min_val),
                                             _scalar("hardtanh", "max_val", 3, max_val)))


def sigmoid(input):
    if not _ours(input):
        return torch.sigmoid(input)
    return ops.activation_fwd(input, "sigmoid", [])


def tanh(input):
    if not _ours(input):
        return torch.tanh(input)
    return ops.activation_fwd(input, "tanh", [])


def softplus(input, beta=1.0, threshold=20.0):
    if not _ours(input):
        return TF.softplus(input, beta, threshold)
    (input,) = _ops.autocast_inputs("aten::softplus", True, input)
    return ops.activation_fwd(input, "softplus", [_scalar("softplus", "beta", 2, beta),
                                                  _scalar("softplus", "threshold", 3, threshold)])


def rrelu(input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False):
    if not training and lower <= upper and _ops.under_function_transform():
        # torch's eval RReLU, as a LeakyReLU that vmap can batch (torch's rrelu it cannot).
        return TF.leaky_relu(input, (lower + upper) / 2, inplace)
    if not _ours(input) or lower > upper or not math.isfinite(lower) or not math.isfinite(upper):
        # torch's errors for lower > upper and for bounds that are not finite (and its
        # behaviour for other dtypes).
        return TF.rrelu(input, lower, upper, training, inplace)
    # torch's rrelu returns a contiguous tensor whatever the input's layout.
    if not training:
        # torch's eval RReLU: LeakyReLU with the mean slope.
        slope = [(lower + upper) / 2]
        return _apply(input, inplace,
                      lambda x: ops.activation_fwd(_ops.contiguous(x), "leaky_relu", slope))
    # One slope per element, drawn by torch's generator (torch.manual_seed reproduces it); only
    # those of the elements <= 0 are used. The op also returns the slopes it applied (1 for
    # x > 0), which its backward multiplies by. (torch draws one float64 per element <= 0, in
    # order; drawing exactly those, counted and scattered, took 1.5x torch's time, where this
    # takes half.)
    noise = torch.empty(input.shape, dtype=input.dtype, device=input.device).uniform_(lower, upper)
    return _apply(input, inplace, lambda x: ops.rrelu_with_noise_fwd(_ops.contiguous(x), noise)[0])


def prelu(input, weight):
    if not _ours(input) or not isinstance(weight, torch.Tensor):
        # (torch's TypeError for a weight that is no tensor)
        return TF.prelu(input, weight)
    input, weight = _ops.autocast_inputs("aten::prelu", False, input, weight)
    return ops.prelu_fwd(input, weight)


# ---- modules ----------------------------------------------------------------------------------


class ReLU(_ops.FusedModule, torch.nn.ReLU):
    def forward(self, input):
        return relu(input, inplace=self.inplace)


class ReLU6(_ops.FusedModule, torch.nn.ReLU6):
    def forward(self, input):
        return relu6(input, inplace=self.inplace)


class LeakyReLU(_ops.FusedModule, torch.nn.LeakyReLU):
    def forward(self, input):
        return leaky_relu(input, self.negative_slope, self.inplace)


class PReLU(_ops.FusedModule, torch.nn.PReLU):
    def forward(self, input):
        return prelu(input, self.weight)


class RReLU(_ops.FusedModule, torch.nn.RReLU):
    def forward(self, input):
        return rrelu(input, self.lower, self.upper, self.training, self.inplace)


class ELU(_ops.FusedModule, torch.nn.ELU):
    def forward(self, input):
        return elu(input, self.alpha, self.inplace)


class SELU(_ops.FusedModule, torch.nn.SELU):
    def forward(self, input):
        return selu(input, self.inplace)


class CELU(_ops.FusedModule, torch.nn.CELU):
    def forward(self, input):
        return celu(input, self.alpha, self.inplace)


class GELU(_ops.FusedModule, torch.nn.GELU):
    def forward(self, input):
        return gelu(input, approximate=self.approximate)


class SiLU(_ops.FusedModule, torch.nn.SiLU):
    def forward(self, input):
        return silu(input, inplace=self.inplace)


class Mish(_ops.FusedModule, torch.nn.Mish):
    def forward(self, input):
        return mish(input, inplace=self.inplace)


class Hardswish(_ops.FusedModule, torch.nn.Hardswish):
    def forward(self, input):
        return hardswish(input, self.inplace)


class Hardsigmoid(_ops.FusedModule, torch.nn.Hardsigmoid):
    def forward(self, input):
        return hardsigmoid(input, self.inplace)


class Hardtanh(_ops.FusedModule, torch.nn.Hardtanh):
    def forward(self, input):
        return hardtanh(input, self.min_val, self.max_val, self.inplace)


class Sigmoid(_ops.FusedModule, torch.nn.Sigmoid):
    def forward(self, input):
        return sigmoid(input)


class Tanh(_ops.FusedModule, torch.nn.Tanh):
    def forward(self, input):
        return tanh(input)


class Softplus(_ops.FusedModule, torch.nn.Softplus):
    def forward(self, input):
        return softplus(input, self.beta, self.threshold)
