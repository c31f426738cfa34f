"""fused_norm: fused normalization kernels (CPU and CUDA) as drop-in torch.nn replacements."""

from . import _ops  # noqa: F401  (registers fake kernels, autograd and autocast)
from . import reference
from .activations import (
    CELU, ELU, GELU, Hardsigmoid, Hardswish, Hardtanh, LeakyReLU, Mish, PReLU, ReLU, ReLU6, RReLU,
    SELU, Sigmoid, SiLU, Softplus, Tanh, celu, elu, gelu, hardsigmoid, hardswish, hardtanh,
    leaky_relu, mish, prelu, relu, relu6, rrelu, selu, sigmoid, silu, softplus, tanh,
)
from .convert import ConversionReport, convert, revert
from .dyt import DyT, dyt
from .fold import fold_batch_norm
from .functional import (
    add_layer_norm, add_rms_norm, batch_norm, batch_norm_add_relu, batch_norm_relu, group_norm,
    group_norm_act, instance_norm, layer_norm, rms_norm,
)
from .modules import (
    AddLayerNorm, AddRMSNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, GroupNorm, InstanceNorm1d,
    InstanceNorm2d, InstanceNorm3d, LayerNorm, RMSNorm, SyncBatchNorm,
)
from .gated import GeGLU, SwiGLU, geglu, swiglu
from .softmax import LogSoftmax, Softmax, log_softmax, softmax

__version__ = "0.1.0"

__all__ = [
    "AddLayerNorm", "AddRMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "CELU",
    "ConversionReport", "DyT", "ELU", "GELU", "GeGLU", "GroupNorm", "Hardsigmoid", "Hardswish",
    "Hardtanh", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "LayerNorm", "LeakyReLU",
    "LogSoftmax", "Mish", "PReLU", "RMSNorm", "RReLU", "ReLU", "ReLU6", "SELU", "SiLU", "Sigmoid",
    "Softmax", "Softplus", "SwiGLU", "SyncBatchNorm", "Tanh", "add_layer_norm", "add_rms_norm",
    "batch_norm", "batch_norm_add_relu", "batch_norm_relu", "celu", "convert", "dyt", "elu",
    "fold_batch_norm", "geglu", "gelu", "group_norm", "group_norm_act", "hardsigmoid", "hardswish",
    "hardtanh", "instance_norm", "layer_norm", "leaky_relu", "log_softmax", "mish", "prelu",
    "reference", "relu", "relu6", "revert", "rms_norm", "rrelu", "selu", "sigmoid", "silu",
    "softmax", "softplus", "swiglu", "tanh",
]
