"""fused_norm: fused normalization kernels (CPU and CUDA) as drop-in torch.nn replacements."""

from . import _ops  # noqa: F401  (registers fake kernels, autograd and autocast)
from . import reference
from .functional import layer_norm, rms_norm
from .modules import LayerNorm, RMSNorm

__version__ = "0.1.0"

__all__ = ["LayerNorm", "RMSNorm", "layer_norm", "rms_norm", "reference"]
