"""Whole-model drop-in: `convert(model)` swaps the torch.nn norms and activations of a model for
fused_norm's, in place, and `revert(model)` swaps them back.

Every module is converted by changing its class (``module.__class__ = Fused``), never by
building a new one: our modules subclass torch's with the same state, so the object keeps its
parameters (the very Parameter objects an optimizer holds), buffers, hooks, training mode,
device, dtype and memory format, and every reference to it (a module shared by several parents,
or held in a plain attribute) sees the change. Each converted module records how to undo it in
``module._fused_norm_undo``, which is all `revert` reads.

Fusion of a norm with the activation after it happens only where the order is visible without
running the model: adjacent children of a ``torch.nn.Sequential`` whose forward is Sequential's
own. The activation's slot then holds a `FusedActivation` (an Identity keeping the original for
`revert`), and the norm's own output is the activated one. A module used in more than one place
is never fused: torchvision's ResNet calls one ``self.relu`` after a BatchNorm and after the
residual add, so it stays.

Norm classes of other libraries (HuggingFace's LlamaRMSNorm, T5LayerNorm and Gemma's RMSNorm,
apex-style FusedLayerNorm / FusedRMSNorm, ...) are recognised by structure: a leaf module
with a 1-D weight Parameter, an `eps` or `variance_epsilon` number, no buffers and a forward of
the input alone. The candidate is then run on a probe input, with its own weights and with
random ones, and compared with RMSNorm, LayerNorm and their zero-centered forms ((1 + weight),
as Gemma); it is converted only when one of them matches, else reported as skipped.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers

import torch
import torch.nn as nn

from . import activations as A
from . import modules as M
from . import softmax as S

__all__ = ["Change", "ConversionReport", "FusedActivation", "convert", "revert"]

_NORMS = {
    nn.LayerNorm: M.LayerNorm, nn.RMSNorm: M.RMSNorm, nn.BatchNorm1d: M.BatchNorm1d,
    nn.BatchNorm2d: M.BatchNorm2d, nn.BatchNorm3d: M.BatchNorm3d,
    nn.SyncBatchNorm: M.SyncBatchNorm, nn.GroupNorm: M.GroupNorm,
    nn.InstanceNorm1d: M.InstanceNorm1d, nn.InstanceNorm2d: M.InstanceNorm2d,
    nn.InstanceNorm3d: M.InstanceNorm3d,
}
_ACTIVATIONS = {
    getattr(nn, name): getattr(A, name)
    for name in ("ReLU", "ReLU6", "LeakyReLU", "PReLU", "RReLU", "ELU", "SELU", "CELU", "GELU",
                 "SiLU", "Mish", "Hardswish", "Hardsigmoid", "Hardtanh", "Sigmoid", "Tanh",
                 "Softplus")
}
_SOFTMAX = {nn.Softmax: S.Softmax, nn.LogSoftmax: S.LogSoftmax}

# State that a fused class adds to its torch base, at the values that compute torch's function.
_ADDED_STATE = {
    **{cls: {"relu": False} for cls in (M.BatchNorm1d, M.BatchNorm2d, M.BatchNorm3d,
                                         M.SyncBatchNorm)},
    M.GroupNorm: {"activation": "none"},
}

def _class_name(cls):
    for package in ("torch.nn", "fused_norm"):
        if cls.__module__.startswith(package + "."):
            return f"{package}.{cls.__qualname__}"
    return f"{cls.__module__}.{cls.__qualname__}"


@dataclasses.dataclass(frozen=True)
class Change:
    """One module changed (or, in `ConversionReport.skipped`, left alone, with the reason in
    `note`). `fused` names the activation that was fused into this module, if any."""

    name: str
    old: type
    new: type
    fused: str | None = None
    note: str = ""

    def __str__(self):
        text = f"{self.name or '<root>'}: {_class_name(self.old)} -> {_class_name(self.new)}"
        if self.fused is not None:
            text += f" (fused with {self.fused!r})"
        return text + (f" [{self.note}]" if self.note else "")


@dataclasses.dataclass
class ConversionReport:
    """What `convert` or `revert` did: `changed` modules and the `skipped` ones with why."""

    changed: list[Change] = dataclasses.field(default_factory=list)
    skipped: list[Change] = dataclasses.field(default_factory=list)

    @property
    def fused(self):
        return [change for change in self.changed if change.fused is not None]

    def __len__(self):
        return len(self.changed)

    def __iter__(self):
        return iter(self.changed)

    def __str__(self):
        lines = [f"{len(self.changed)} module(s) changed, {len(self.fused)} fusion(s)"]
        lines += [f"  {change}" for change in self.changed]
        if self.skipped:
            lines.append(f"{len(self.skipped)} module(s) skipped")
            lines += [f"  {skip.name or '<root>'} ({_class_name(skip.old)}): {skip.note}"
                      for skip in self.skipped]
        return "\n".join(lines)


class FusedActivation(nn.Identity):
    """Stands where an activation was fused into the norm before it (`norm`, named `into` by
    `convert`); `revert` puts the original back. Neither is a submodule (the original has no
    state, the norm is the parent's already), so state_dict is unchanged; the norm is held by
    identity, which deepcopy and pickling keep within the copy, unlike a name, which depends on
    the module it is taken from."""

    def __init__(self, original, norm, into):
        super().__init__()
        object.__setattr__(self, "original", original)
        object.__setattr__(self, "norm", norm)
        self.into = into
        self.train(original.training)

    def extra_repr(self):
        return f"{type(self.original).__name__} fused into {self.into!r}"


def convert(model, *, norms=True, activations=True, softmax=True, fuse=True, exclude=()):
    """Swap, in place, the norms (`norms`), activations (`activations`) and Softmax/LogSoftmax
    (`softmax`) of `model` for fused_norm's, and with `fuse` also fuse BatchNorm -> ReLU and
    GroupNorm -> ReLU/SiLU/GELU/Mish pairs of a Sequential into one module. `exclude`: module
    names (a name excludes that module and everything under it) and module classes to leave
    alone. Modules that are fused_norm's already are left as they are, so converting twice
    changes nothing. Returns a `ConversionReport` of what changed and what was skipped.

    A fused norm returns the activated values itself: called alone (``model[:2](x)`` of a
    Conv-BatchNorm-ReLU Sequential), or seen by a forward hook added later, it gives act(norm(x))
    where torch's gave norm(x). `fuse=False` keeps every norm's output as torch's."""
    report = ConversionReport()
    excluded = _exclusion(exclude)
    table = {**(_NORMS if norms else {}), **(_ACTIVATIONS if activations else {}),
             **(_SOFTMAX if softmax else {})}
    for name, module in model.named_modules():
        if excluded(name, module):
            continue
        old, fused_cls = type(module), table.get(type(module))
        if fused_cls is not None:
            _swap_class(module, fused_cls, _ADDED_STATE.get(fused_cls, {}))
            report.changed.append(Change(name, old, fused_cls))
        elif norms and _is_norm_candidate(module):
            _convert_library_norm(name, module, report)
    if fuse and norms:
        _fuse_sequentials(model, excluded, report)
    return report


def revert(model):
    """Undo `convert` on `model`, in place: every module it changed gets its original class
    (torch's, or the library's) and state back, and fused activations return to their slots.
    Parameters and buffers are kept as they are now. Returns a `ConversionReport`.

    `model` may be a part of the converted model, but one holding each fused pair whole: a norm
    whose activation's slot lies outside it raises ValueError, before anything changes."""
    _check_fused_pairs_whole(model)
    report = ConversionReport()
    for parent_name, parent in list(model.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, FusedActivation):
                # The slot's mode, which train() and eval() kept current since the fusion.
                child.original.train(child.training)
                setattr(parent, child_name, child.original)
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                report.changed.append(Change(name, FusedActivation, type(child.original)))
    for name, module in model.named_modules():
        undo = module.__dict__.pop("_fused_norm_undo", None)
        if undo is None:
            continue
        new = type(module)
        module.__class__ = undo["class"]
        for attr in undo["added"]:
            del module.__dict__[attr]
        module.__dict__.update(undo["replaced"])
        report.changed.append(Change(name, new, undo["class"]))
    return report


def _check_fused_pairs_whole(model):
    # Reverting the norm alone would give it back its unfused state, and the activation would
    # be lost: its slot, outside `model`, stays an Identity.
    slotted = {id(module.norm) for module in model.modules()
               if isinstance(module, FusedActivation)}
    for name, module in model.named_modules():
        undo = module.__dict__.get("_fused_norm_undo")
        if undo is not None and undo.get("fused") is not None and id(module) not in slotted:
            which = f"module {name!r}" if name else "the module"
            raise ValueError(
                f"revert: {which} ({_class_name(type(module))}) has the {undo['fused']} after "
                "it fused into it, but that activation's slot (a FusedActivation) is outside "
                "the module being reverted, and reverting the norm alone would lose the "
                "activation; revert the module that holds both (their parent, or the whole "
                "model)")


def _exclusion(exclude):
    if isinstance(exclude, (str, type)):
        exclude = (exclude,)
    names = tuple(item for item in exclude if isinstance(item, str))
    types = tuple(item for item in exclude if isinstance(item, type))
    if len(names) + len(types) != len(tuple(exclude)):
        raise TypeError("exclude takes module names (str) and module classes")

    def excluded(name, module):
        return isinstance(module, types) or any(
            name == prefix or name.startswith(prefix + ".") for prefix in names)

    return excluded


def _swap_class(module, new_class, attrs):
    """Make `module` an instance of `new_class` with `attrs` set, recording how to undo both
    (the first record wins: reverting a fused module restores its state before any change)."""
    undo = module.__dict__.get("_fused_norm_undo")
    if undo is None:
        # Plain data (no sentinel object), so that it survives deepcopy and pickling.
        undo = {"class": type(module), "added": [], "replaced": {}, "fused": None}
    for attr, value in attrs.items():
        if attr in module.__dict__:
            if attr not in undo["added"]:
                undo["replaced"].setdefault(attr, module.__dict__[attr])
        elif attr not in undo["added"]:
            undo["added"].append(attr)
        module.__dict__[attr] = value
    module.__class__ = new_class
    module.__dict__["_fused_norm_undo"] = undo


# ---- norms of other libraries -----------------------------------------------------------------


def _eps_of(module):
    for attr in ("variance_epsilon", "eps"):
        if attr in module.__dict__:
            eps = module.__dict__[attr]
            if eps is None or (isinstance(eps, numbers.Real) and not isinstance(eps, bool)):
                return attr, eps
    return None


def _is_norm_candidate(module):
    if isinstance(module, tuple(_NORMS.values()) + (M.AddLayerNorm, M.AddRMSNorm)):
        return False
    weight = module._parameters.get("weight")
    return (next(module.children(), None) is None and not module._buffers
            and weight is not None and weight.dim() == 1 and weight.numel() > 0
            and _eps_of(module) is not None)


# (fused class, reference function of (x, weight, bias, eps), fused-class state).
def _rms(x, weight, bias, eps):
    return nn.functional.rms_norm(x, weight.shape, weight, eps)


def _rms_1p(x, weight, bias, eps):
    return nn.functional.rms_norm(x, weight.shape, 1 + weight, eps)


def _layer(x, weight, bias, eps):
    return nn.functional.layer_norm(x, weight.shape, weight, bias, eps)


def _layer_1p(x, weight, bias, eps):
    return nn.functional.layer_norm(x, weight.shape, 1 + weight, bias, eps)


def _zero_centered():
    return {**M._ADD_NORM_DEFAULTS, "zero_centered_weight": True}


_KINDS = [
    ("RMSNorm", _rms, M.RMSNorm),
    ("RMSNorm with (1 + weight)", _rms_1p, M.AddRMSNorm),
    ("LayerNorm", _layer, M.LayerNorm),
    ("LayerNorm with (1 + weight)", _layer_1p, M.AddLayerNorm),
]

# Probe tolerances: a few roundings of the module's dtype. A different formula (another norm,
# eps placed elsewhere, a missing (1 +)) misses by orders of magnitude more.
_PROBE_TOL = {torch.float64: 1e-7, torch.float32: 1e-4, torch.float16: 4e-3,
              torch.bfloat16: 3e-2}


def _probe(module, weight, bias, eps):
    """The first kind in _KINDS that `module` computes, or a string saying why none."""
    if weight.dtype not in _PROBE_TOL or weight.device.type == "meta":
        return f"cannot probe a {weight.dtype} weight on {weight.device.type}"
    hidden = weight.numel()
    generator = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=generator).to(weight.device, weight.dtype)

    # Rows at three scales: small rows make eps matter, and the offset separates LayerNorm from
    # RMSNorm.
    scale = torch.tensor([1.0, 1e-3, 30.0]).view(1, 3, 1).to(weight.device, weight.dtype)
    x = (rand(2, 3, hidden) + 0.5) * scale
    params = [{"weight": weight}, {"weight": rand(hidden) + 1}]
    if bias is not None:
        params[0]["bias"] = bias
        params[1]["bias"] = rand(hidden)
    outputs = []
    try:
        # The module's own function, not what an enclosing autocast region would make of it.
        with torch.no_grad(), torch.autocast(weight.device.type, enabled=False):
            for values in params:
                outputs.append(torch.func.functional_call(module, values, (x,)))
    except Exception as error:  # a module we cannot call like a norm is simply not one
        return f"probe raised {type(error).__name__}: {error}"
    if not all(isinstance(out, torch.Tensor) and out.shape == x.shape and out.dtype == x.dtype
               for out in outputs):
        return "probe output is not a tensor of the input's shape and dtype"
    tol = _PROBE_TOL[weight.dtype]
    for kind in _KINDS:
        if kind[0].startswith("RMS") and bias is not None:
            continue
        if kind[0].startswith("Layer") and eps is None:
            continue
        with torch.no_grad():
            expected = [kind[1](x.float(), values["weight"].float(),
                                None if bias is None else values["bias"].float(),
                                eps).to(x.dtype) for values in params]
        if all(torch.allclose(out, ref, atol=tol, rtol=tol)
               for out, ref in zip(outputs, expected)):
            return kind
    return "computes none of RMSNorm, LayerNorm or their (1 + weight) forms"


def _forward_mismatch(cls):
    """Why `cls.forward` does not take the input alone (self and one positional parameter, no
    other, not even a defaulted one or *args / **kwargs), or None when it does. The probe passes
    the input alone and our forward takes nothing else: converted, a norm whose callers may pass
    more (a gate, a scale) would refuse it."""
    try:
        params = list(inspect.signature(cls.forward).parameters.values())
    except (TypeError, ValueError):  # a compiled forward may carry no signature
        return "forward's signature cannot be read"
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if len(params) == 2 and all(param.kind in positional for param in params):
        return None
    return "forward takes more than the input"


def _convert_library_norm(name, module, report):
    mismatch = _forward_mismatch(type(module))
    if mismatch is not None:
        report.skipped.append(Change(name, type(module), type(module), note=mismatch))
        return
    attr, eps = _eps_of(module)
    weight = module._parameters["weight"]
    bias = module._parameters.get("bias", module.__dict__.get("bias"))
    if bias is not None and not (isinstance(bias, nn.Parameter) and bias.shape == weight.shape):
        report.skipped.append(Change(name, type(module), type(module),
                                     note="bias is not a Parameter of the weight's shape"))
        return
    kind = _probe(module, weight, bias, eps)
    if isinstance(kind, str):
        report.skipped.append(Change(name, type(module), type(module), note=kind))
        return
    label, _, fused_cls = kind
    attrs = {"normalized_shape": tuple(weight.shape), "eps": eps, "elementwise_affine": True}
    if issubclass(fused_cls, (M.LayerNorm, M.AddLayerNorm)) and "bias" not in module._parameters:
        attrs["bias"] = None
    if fused_cls in (M.AddRMSNorm, M.AddLayerNorm):
        attrs["_fusion"] = _zero_centered()
    old = type(module)
    _swap_class(module, fused_cls, attrs)
    report.changed.append(Change(name, old, fused_cls, note=f"recognised as {label} ({attr})"))


# ---- fusion -----------------------------------------------------------------------------------

_BATCH_NORMS = (M.BatchNorm1d, M.BatchNorm2d, M.BatchNorm3d, M.SyncBatchNorm)


def _group_norm_activation(act):
    if type(act) in (nn.ReLU, A.ReLU):
        return "relu"
    if type(act) in (nn.SiLU, A.SiLU):
        return "silu"
    if type(act) in (nn.Mish, A.Mish):
        return "mish"
    if type(act) in (nn.GELU, A.GELU):
        return "gelu" if act.approximate == "none" else "gelu_tanh"
    return None


def _fusion_state(norm, act):
    """The state that makes `norm` compute act(norm(x)) too, or None when it cannot."""
    if type(norm) in _BATCH_NORMS and not norm.relu and type(act) in (nn.ReLU, A.ReLU):
        return {"relu": True}
    if type(norm) is M.GroupNorm and norm.activation == "none":
        name = _group_norm_activation(act)
        return None if name is None else {"activation": name}
    return None


def _has_hooks(module):
    # A hook on the norm would see the activation's output, one on the activation nothing.
    return any(getattr(module, hooks, None) for hooks in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def _fuse_sequentials(model, excluded, report):
    uses = {}
    for _, module in model.named_modules(remove_duplicate=False):
        uses[id(module)] = uses.get(id(module), 0) + 1
    for parent_name, parent in model.named_modules():
        if not (isinstance(parent, nn.Sequential)
                and type(parent).forward is nn.Sequential.forward):
            continue
        names = list(parent._modules)
        for first, second in zip(names, names[1:]):
            norm, act = parent._modules[first], parent._modules[second]
            qualified = [f"{parent_name}.{n}" if parent_name else n for n in (first, second)]
            state = None if norm is None or act is None else _fusion_state(norm, act)
            if (state is None or uses[id(norm)] != 1 or uses[id(act)] != 1
                    or excluded(qualified[0], norm) or excluded(qualified[1], act)
                    or _has_hooks(norm) or _has_hooks(act)):
                continue
            _swap_class(norm, type(norm), state)
            # Plain data, so that revert knows the norm is half of a pair even in a copy.
            norm.__dict__["_fused_norm_undo"]["fused"] = type(act).__name__
            parent._modules[second] = FusedActivation(act, norm, qualified[0])
            report.changed.append(Change(qualified[0], type(norm), type(norm),
                                         fused=qualified[1]))
