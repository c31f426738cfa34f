"""Functional forms, with the signatures and defaults of torch.nn.functional."""

import numbers

import torch

from . import _batch_norm, _ops
from .reference import stats_dtype

__all__ = ["batch_norm", "batch_norm_add_relu", "batch_norm_relu", "layer_norm", "rms_norm"]


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
