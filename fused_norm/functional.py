"""Functional forms, with the signatures and defaults of torch.nn.functional."""

import numbers

import torch

from . import _ops
from .reference import stats_dtype

__all__ = ["layer_norm", "rms_norm"]


def _as_shape(normalized_shape):
    if isinstance(normalized_shape, numbers.Integral):
        return (int(normalized_shape),)
    return tuple(normalized_shape)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Like torch.nn.functional.layer_norm."""
    return _ops.ops.layer_norm_fwd(input, _as_shape(normalized_shape), weight, bias, eps)[0]


def rms_norm(input, normalized_shape, weight=None, eps=None):
    """Like torch.nn.functional.rms_norm; eps=None means the machine epsilon of the dtype the
    statistics are computed in (float32 for 16- and 32-bit input, float64 for float64)."""
    if eps is None:
        eps = torch.finfo(stats_dtype(input.dtype)).eps
    return _ops.ops.rms_norm_fwd(input, _as_shape(normalized_shape), weight, eps)[0]
