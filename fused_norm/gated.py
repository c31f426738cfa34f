"""The gated units SwiGLU and GeGLU: ``act(a) * b``, forward and backward each in one pass.

Semantics (there is no torch.nn equivalent to match):

- one input ``x``: ``a, b = x.chunk(2, dim=-1)``, so the gate ``act`` applies to the *first*
  half and the output's last dim is half the input's, as in the LLaMA/PaLM MLPs written
  ``silu(x @ W1) * (x @ W3)`` with the two projections fused into one;
- two inputs: ``act(a) * b`` for ``a`` and ``b`` of the same shape and dtype (no broadcasting).

SwiGLU's gate is SiLU; GeGLU's is GELU, ``approximate='none'`` (erf) or ``'tanh'``, like
torch.nn.GELU. The backward recomputes ``act(a)`` from ``a``: nothing else is saved.
"""

import torch

from . import _ops
from .reference import gated_ref

__all__ = ["GeGLU", "SwiGLU", "geglu", "swiglu"]


def _gated(x, b, activation):
    if _ops.defer_to_torch(x):
        return gated_ref(x, b, activation)
    if b is None:
        return _ops.ops.gated_chunk_fwd(x, activation)
    return _ops.ops.gated_fwd(x, b, activation)


def _gelu_gate(approximate):
    if approximate not in ("none", "tanh"):
        # torch.nn.functional.gelu's error, word for word.
        raise RuntimeError("approximate argument must be either none or tanh.")
    return "gelu" if approximate == "none" else "gelu_tanh"


def swiglu(input, other=None):
    """``silu(a) * b``: with one tensor, ``a, b = input.chunk(2, -1)`` (the last dim must be
    even); with two, ``a = input``, ``b = other`` (same shape and dtype)."""
    return _gated(input, other, "silu")


def geglu(input, other=None, approximate="none"):
    """``gelu(a, approximate=approximate) * b``; inputs as in :func:`swiglu`."""
    return _gated(input, other, _gelu_gate(approximate))


class SwiGLU(_ops.FusedModule, torch.nn.Module):
    """``silu(a) * b`` with ``a, b = input.chunk(2, -1)``; forward(a, b) takes the halves as two
    tensors instead. No parameters: the projections stay ordinary Linear layers."""

    def forward(self, input, other=None):
        return swiglu(input, other)


class GeGLU(_ops.FusedModule, torch.nn.Module):
    """``gelu(a, approximate) * b`` with ``a, b = input.chunk(2, -1)``; forward(a, b) takes the
    halves as two tensors instead. ``approximate``: 'none' (erf) or 'tanh', as torch.nn.GELU."""

    def __init__(self, approximate="none"):
        super().__init__()
        _gelu_gate(approximate)
        self.approximate = approximate

    def extra_repr(self):
        return f"approximate={self.approximate!r}"

    def forward(self, input, other=None):
        return geglu(input, other, self.approximate)
