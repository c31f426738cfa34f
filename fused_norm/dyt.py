"""DyT (Dynamic Tanh, "Transformers without Normalization", Zhu et al. 2025) on fused_norm's
kernels: y = weight * tanh(alpha * x) + bias, a drop-in for LayerNorm in transformers.

alpha is a learnable scalar (a parameter of shape [1]); weight and bias have normalized_shape,
the input's trailing dims, and are named as LayerNorm's, so a DyT's state_dict is a LayerNorm's
(weight, bias) plus alpha. Accumulation is in float32 (float64 for float64 input); float16 and
bfloat16 input may come with float32 parameters. The output is contiguous, in the input's dtype.
"""

import numbers

import torch
from torch.nn import init
from torch.nn.parameter import Parameter

from . import _ops  # registers fakes and autograd; defer_to_torch
from .reference import dyt_ref, stats_dtype

ops = torch.ops.fused_norm

__all__ = ["DyT", "dyt"]


def dyt(input, alpha, weight=None, bias=None):
    """weight * tanh(alpha * input) + bias. alpha: a one-element tensor; weight, bias: the shape
    of input's trailing dims (or None: 1 and 0). Under a torch.func transform or forward-mode
    AD, and for input our kernels do not take (_ops.defer_to_torch), the plain torch
    composition in opmath."""
    if _ops.defer_to_torch(input):
        acc = stats_dtype(input.dtype)
        y = dyt_ref(input.to(acc), alpha.to(acc), *(None if t is None else t.to(acc)
                                                     for t in (weight, bias)))
        return y.to(input.dtype)
    return ops.dyt_fwd(input, alpha, weight, bias)


class DyT(_ops.FusedModule, torch.nn.Module):
    """Dynamic Tanh over the trailing dims `normalized_shape` of its input, with LayerNorm's
    constructor arguments where they mean the same (elementwise_affine, bias, device, dtype) and
    alpha_init_value (the paper's 0.5 by default) in place of eps."""

    __constants__ = ["normalized_shape", "alpha_init_value", "elementwise_affine"]

    def __init__(self, normalized_shape, alpha_init_value=0.5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        self.normalized_shape = tuple(normalized_shape)
        self.alpha_init_value = float(alpha_init_value)
        self.elementwise_affine = elementwise_affine
        self.alpha = Parameter(torch.empty(1, **factory_kwargs))
        if self.elementwise_affine:
            self.weight = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            if bias:
                self.bias = Parameter(torch.empty(self.normalized_shape, **factory_kwargs))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        init.constant_(self.alpha, self.alpha_init_value)
        if self.weight is not None:
            init.ones_(self.weight)
        if self.bias is not None:
            init.zeros_(self.bias)

    def forward(self, input):
        return dyt(input, self.alpha, self.weight, self.bias)

    def extra_repr(self):
        return ("{normalized_shape}, alpha_init_value={alpha_init_value}, "
                "elementwise_affine={elementwise_affine}".format(**self.__dict__))
