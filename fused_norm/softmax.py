"""Softmax and LogSoftmax: functional forms with torch.nn.functional's signatures and the
torch.nn modules running our kernels."""

import torch
import torch.nn.functional

from . import _ops
from ._arguments import torch_int

__all__ = ["LogSoftmax", "Softmax", "log_softmax", "softmax"]


def _softmax(name, input, dim, stacklevel, dtype, log):
    if dim is None:
        # torch's legacy implicit dim (0 for 0-, 1- and 3-D input, else 1) and its warning, with
        # the same stack depth below the caller as torch.nn.functional's own.
        dim = torch.nn.functional._get_softmax_dim(name, input.dim(), stacklevel + 1)
    dim = torch_int(name, "dim", 1, dim)
    if _ops.defer_to_torch(input):
        torch_softmax = torch.nn.functional.log_softmax if log else torch.nn.functional.softmax
        return torch_softmax(input, dim, dtype=dtype)
    if dtype is not None:
        if not isinstance(dtype, torch.dtype):
            raise TypeError(
                f"{name}(): argument 'dtype' must be torch.dtype, not {type(dtype).__name__}")
        # torch casts before the op: the output comes in `dtype`, and so does the gradient's math.
        input = input.to(dtype)
    return _ops.ops.softmax_fwd(input, dim, log)


def softmax(input, dim=None, _stacklevel=3, dtype=None):
    """Like torch.nn.functional.softmax."""
    return _softmax("softmax", input, dim, _stacklevel, dtype, log=False)


def log_softmax(input, dim=None, _stacklevel=3, dtype=None):
    """Like torch.nn.functional.log_softmax."""
    return _softmax("log_softmax", input, dim, _stacklevel, dtype, log=True)


class Softmax(_ops.FusedModule, torch.nn.Softmax):
    def forward(self, input):
        return softmax(input, self.dim, _stacklevel=5)


class LogSoftmax(_ops.FusedModule, torch.nn.LogSoftmax):
    def forward(self, input):
        return log_softmax(input, self.dim, _stacklevel=5)
