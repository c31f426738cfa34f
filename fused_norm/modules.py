"""Drop-in modules: subclasses of the torch.nn classes, so constructors, defaults, parameters,
state_dict keys, repr and isinstance checks are torch's own; only forward runs our kernels."""

import inspect

import torch

from . import _batch_norm, _ops
from . import functional as F
from ._arguments import check_dropout_p

__all__ = [
    "AddLayerNorm", "AddRMSNorm", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "GroupNorm", "InstanceNorm1d", "InstanceNorm2d",
    "InstanceNorm3d", "LayerNorm", "RMSNorm", "SyncBatchNorm",
]


class LayerNorm(_ops.FusedModule, torch.nn.LayerNorm):
    def forward(self, input):
        return F.layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)


class RMSNorm(_ops.FusedModule, torch.nn.RMSNorm):
    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, self.weight, self.eps)


# The options of the fused add + norm modules and their defaults (see functional.add_layer_norm).
_ADD_NORM_DEFAULTS = {
    "alpha": 1.0, "dropout_p": 0.0, "prenorm": False, "residual_in_fp32": False,
    "out_dtype": None, "zero_centered_weight": False, "memory_efficient": False,
}


class _AddNorm(_ops.FusedModule):
    """The fusion options kept on an add + norm module; parameters and state_dict are those of
    the norm it subclasses."""

    def __init__(self, *args, alpha=1.0, dropout_p=0.0, prenorm=False, residual_in_fp32=False,
                 out_dtype=None, zero_centered_weight=False, memory_efficient=False, **kwargs):
        check_dropout_p(dropout_p)
        self._fusion = {
            "alpha": alpha, "dropout_p": dropout_p, "prenorm": prenorm,
            "residual_in_fp32": residual_in_fp32, "out_dtype": out_dtype,
            "zero_centered_weight": zero_centered_weight, "memory_efficient": memory_efficient,
        }
        super().__init__(*args, **kwargs)

    def reset_parameters(self):
        super().reset_parameters()
        # (1 + weight) starts at 1, as the plain weight does.
        if self.weight is not None and self._fusion["zero_centered_weight"]:
            torch.nn.init.zeros_(self.weight)

    def extra_repr(self):
        changed = [f"{name}={value}" for name, value in self._fusion.items()
                   if value != _ADD_NORM_DEFAULTS[name]]
        return ", ".join([super().extra_repr()] + changed)

    def _options(self):
        options = dict(self._fusion)
        options["training"] = self.training
        return options


def _fusion_option(name):
    """The fusion option `name` as an attribute of the module, read and set as nn.Dropout's p
    is (``m.dropout_p = 0.1``); its value lives in _fusion, which convert sets whole."""
    return property(lambda self: self._fusion[name],
                    lambda self, value: self._fusion.__setitem__(name, value))


for _name in _ADD_NORM_DEFAULTS:
    setattr(_AddNorm, _name, _fusion_option(_name))


class AddLayerNorm(_AddNorm, torch.nn.LayerNorm):
    """LayerNorm(dropout(input) + alpha * residual); forward(input, residual=None) returns y, or
    (y, h) with prenorm=True. Options: see fused_norm.add_layer_norm."""

    def forward(self, input, residual=None):
        return F.add_layer_norm(input, residual, self.normalized_shape, self.weight, self.bias,
                                self.eps, **self._options())


class AddRMSNorm(_AddNorm, torch.nn.RMSNorm):
    """RMSNorm(dropout(input) + alpha * residual); forward(input, residual=None) returns y, or
    (y, h) with prenorm=True. Options: see fused_norm.add_rms_norm."""

    def forward(self, input, residual=None):
        return F.add_rms_norm(input, residual, self.normalized_shape, self.weight, self.eps,
                              **self._options())


class _FusedBatchNorm(_ops.FusedModule):
    """forward of torch's _BatchNorm (running statistics, momentum=None as a cumulative average,
    num_batches_tracked, track_running_stats=False) on the fused kernels, plus two options:
    `relu=True` applies ReLU in the same pass, and forward(input, residual) adds `residual`
    before the activation: relu(bn(input) + residual), the tail of a ResNet block."""

    def __init__(self, *args, relu=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = relu

    def extra_repr(self):
        return super().extra_repr() + (", relu=True" if self.relu else "")

    def _batch_norm_args(self):
        """(running_mean, running_var, training, momentum) exactly as torch's _BatchNorm."""
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        keep_running = not self.training or self.track_running_stats
        return (self.running_mean if keep_running else None,
                self.running_var if keep_running else None, use_batch_stats, momentum)

    def forward(self, input, residual=None):
        self._check_input_dim(input)
        running_mean, running_var, training, momentum = self._batch_norm_args()
        return _batch_norm.batch_norm(input, running_mean, running_var, self.weight, self.bias,
                                      training, momentum, self.eps, residual=residual,
                                      relu=self.relu)


class BatchNorm1d(_FusedBatchNorm, torch.nn.BatchNorm1d):
    pass


class BatchNorm2d(_FusedBatchNorm, torch.nn.BatchNorm2d):
    pass


class BatchNorm3d(_FusedBatchNorm, torch.nn.BatchNorm3d):
    pass


class SyncBatchNorm(_FusedBatchNorm, torch.nn.SyncBatchNorm):
    """torch.nn.SyncBatchNorm on the fused kernels, over any torch.distributed backend (gloo on
    CPU included, which torch's own refuses). In training, each process's statistics are
    combined with one all_gather in forward, and the backward's per-channel sums with one
    all_reduce; outputs, gradients and running statistics equal BatchNorm's on the concatenated
    global batch, for uneven and empty local batches too."""

    def forward(self, input, residual=None):
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        # As torch's: only training mode synchronizes; eval without running statistics
        # normalizes with each process's own batch statistics.
        group = self._sync_group() if self.training else None
        if group is not None and _ops.defer_to_torch(input):
            # torch's SyncBatchNorm has no path for these either (its statistics ops take
            # dense CUDA tensors), so there is no torch answer to hand the call to.
            raise NotImplementedError(
                "fused_norm.SyncBatchNorm synchronizes statistics across processes for dense "
                "strided tensors only: not for nested, sparse, quantized or DTensor input, nor "
                "under torch.func transforms or forward-mode AD")
        running_mean, running_var, training, momentum = self._batch_norm_args()
        if group is None:
            return _batch_norm.batch_norm(input, running_mean, running_var, self.weight,
                                          self.bias, training, momentum, self.eps,
                                          residual=residual, relu=self.relu)
        return _batch_norm.sync_batch_norm(input, running_mean, running_var, self.weight,
                                           self.bias, momentum, self.eps, residual, self.relu,
                                           group)

    def _sync_group(self):
        """The process group to combine statistics over, or None when there is nobody to
        combine with (not initialized, or a world of one)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return None
        group = self.process_group or dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    @classmethod
    def convert_sync_batchnorm(cls, module, process_group=None):
        """Like torch.nn.SyncBatchNorm.convert_sync_batchnorm, into this class: every BatchNorm
        (torch's or ours; a fused ReLU is kept) becomes a SyncBatchNorm with the same parameters,
        buffers and training mode."""
        converted = module
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(
                module, SyncBatchNorm):
            converted = cls(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats, process_group,
                            relu=isinstance(module, _FusedBatchNorm) and module.relu)
            if module.affine:
                with torch.no_grad():
                    converted.weight = module.weight
                    converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted


class GroupNorm(_ops.FusedModule, torch.nn.GroupNorm):
    """torch.nn.GroupNorm on the fused kernels, plus one option: `activation` ('relu', 'silu' /
    'swish', 'gelu', 'gelu_tanh', 'mish') applied in the same pass, forward and backward: the
    GroupNorm + SiLU of a diffusion UNet block in one kernel each way."""

    def __init__(self, *args, activation=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.activation = F._activation_name(activation)

    def extra_repr(self):
        act = "" if self.activation == "none" else f", activation={self.activation!r}"
        return super().extra_repr() + act

    def forward(self, input):
        return F.group_norm_act(input, self.num_groups, self.weight, self.bias, self.eps,
                                self.activation)


class _FusedInstanceNorm(_ops.FusedModule):
    """torch's _InstanceNorm (its input checks, unbatched input, track_running_stats and
    use_input_stats logic) with the normalization itself on the fused kernels."""

    def _apply_instance_norm(self, input):
        return F.instance_norm(
            input, self.running_mean, self.running_var, self.weight, self.bias,
            self.training or not self.track_running_stats,
            self.momentum if self.momentum is not None else 0.0, self.eps)


class InstanceNorm1d(_FusedInstanceNorm, torch.nn.InstanceNorm1d):
    pass


class InstanceNorm2d(_FusedInstanceNorm, torch.nn.InstanceNorm2d):
    pass


class InstanceNorm3d(_FusedInstanceNorm, torch.nn.InstanceNorm3d):
    pass


def _constructor_signature(cls):
    """What inspect.signature (help(), IDEs) shows for a module whose __init__ takes *args and
    **kwargs on to torch's: torch's constructor signature, then our keyword-only options."""
    torch_base = next(base for base in cls.__mro__ if base.__module__.startswith("torch.nn"))
    ours = [p for p in inspect.signature(cls.__init__).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY]
    return inspect.signature(torch_base).replace(
        parameters=[*inspect.signature(torch_base).parameters.values(), *ours])


for _cls in (AddLayerNorm, AddRMSNorm, BatchNorm1d, BatchNorm2d, BatchNorm3d, SyncBatchNorm,
             GroupNorm):
    _cls.__signature__ = _constructor_signature(_cls)
