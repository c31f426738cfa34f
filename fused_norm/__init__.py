"""fused_norm: fused normalization kernels (CPU and CUDA) as drop-in torch.nn replacements."""

from . import _ops  # noqa: F401  (registers fake kernels, autograd and autocast)
from . import reference
from .fold import fold_batch_norm
from .functional import (
    batch_norm, batch_norm_add_relu, batch_norm_relu, group_norm, group_norm_act, instance_norm,
    layer_norm, rms_norm,
)
from .modules import (
    BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d, InstanceNorm2d, InstanceNorm3d,
    LayerNorm, RMSNorm, SyncBatchNorm,
)
from .gated import GeGLU, SwiGLU, geglu, swiglu
from .softmax import LogSoftmax, Softmax, log_softmax, softmax

__version__ = "0.1.0"

__all__ = [
    "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GeGLU", "GroupNorm", "InstanceNorm1d",
    "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "LogSoftmax", "RMSNorm", "Softmax", "SwiGLU",
    "SyncBatchNorm", "batch_norm", "batch_norm_add_relu", "batch_norm_relu", "fold_batch_norm",
    "geglu", "group_norm", "group_norm_act", "instance_norm", "layer_norm", "log_softmax",
    "reference", "rms_norm", "softmax", "swiglu",
]
