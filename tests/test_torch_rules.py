"""Rules the ops share with torch's, found by probing rather than by reading any one op:

- the memory format of outputs: a strided slice of a channels_last tensor gives a channels_last
  output (torch's suggest_memory_format), while a 3-D input laid out channels-last, or another
  permutation, gives a contiguous one;
- every tensor argument on the input's device, parameters left on the meta device (a model
  built there and never materialised) included, where the dispatcher hands the call to the
  fake kernels;
- an input that is not a tensor gets torch's error (its TypeError, mostly).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close

C = 6


def _sliced_channels_last(device):
    x = torch.randn(2, C, 8, 10, device=device).contiguous(memory_format=torch.channels_last)
    return x[:, :, ::2, 1::3]


def _sliced_channels_last_3d(device):
    x = torch.randn(2, C, 4, 6, 5, device=device).contiguous(
        memory_format=torch.channels_last_3d)
    return x[:, :, ::2, :, 1:]


def _transposed_3d(device):
    return torch.randn(3, 7, C, device=device).transpose(1, 2)  # (N, C, L), C innermost


def _permuted_4d(device):
    return torch.randn(2, 5, C, 4, device=device).permute(0, 2, 1, 3)


INPUTS = {
    "sliced-channels-last": _sliced_channels_last,
    "sliced-channels-last-3d": _sliced_channels_last_3d,
    "transposed-3d": _transposed_3d,
    "permuted-4d": _permuted_4d,
}

# (call on torch.nn.functional or fused_norm, the inputs it is checked on)
OPS = {
    "batch_norm": (lambda m, x: m.batch_norm(x, None, None, training=True), INPUTS),
    "batch_norm-eval": (lambda m, x: m.batch_norm(
        x, torch.zeros(C, device=x.device), torch.ones(C, device=x.device)), INPUTS),
    "group_norm": (lambda m, x: m.group_norm(x, 2), INPUTS),
    "instance_norm": (lambda m, x: m.instance_norm(x), INPUTS),
    "rms_norm": (lambda m, x: m.rms_norm(x, x.shape[-1:]), INPUTS),
    # torch's prelu follows any input's strides (TensorIterator); ours the norms' rule, which
    # agrees with it on channels-last input.
    "prelu": (lambda m, x: m.prelu(x, torch.linspace(0.1, 0.6, C, device=x.device)),
              ("sliced-channels-last", "sliced-channels-last-3d")),
}


@pytest.mark.parametrize("op,form", [(op, form) for op, (_, forms) in OPS.items()
                                     for form in forms])
def test_output_memory_format_is_torchs(device, op, form):
    call = OPS[op][0]
    x = INPUTS[form](device).detach().requires_grad_()
    x_ref = torch.empty_strided(x.shape, x.stride(), device=device).copy_(x.detach())
    x_ref.requires_grad_()
    y, expected = call(fused_norm, x), call(F, x_ref)
    assert y.stride() == expected.stride()
    assert_close(y, expected, torch.float32, "fwd")
    grad = torch.randn_like(expected)
    # torch.autograd.grad: a leaf's .grad would take the leaf's strides whatever dx had.
    (dx,), (dx_ref,) = torch.autograd.grad(y, x, grad), torch.autograd.grad(expected, x_ref, grad)
    if op != "rms_norm":
        # rms_norm's dx is contiguous; torch's composite rms_norm differentiates elementwise ops
        # that follow the channels-last input's layout (a known difference, values equal).
        assert dx.stride() == dx_ref.stride()
    assert_close(dx, dx_ref, torch.float32, "bwd")


def _meta(*shape):
    return torch.ones(*shape, device="meta")


META_PARAMETER_CALLS = {
    "layer_norm": lambda x: fused_norm.layer_norm(x, (C,), _meta(C)),
    "rms_norm": lambda x: fused_norm.rms_norm(x, (C,), _meta(C)),
    "group_norm": lambda x: fused_norm.group_norm(x, 2, _meta(C)),
    "batch_norm": lambda x: fused_norm.batch_norm(x, _meta(C), _meta(C), training=True),
    "instance_norm": lambda x: fused_norm.instance_norm(x.unsqueeze(-1), weight=_meta(C)),
    "prelu": lambda x: fused_norm.prelu(x, _meta(C)),
    "dyt": lambda x: fused_norm.dyt(x, _meta(1), _meta(C), _meta(C)),
    "add_layer_norm": lambda x: fused_norm.add_layer_norm(x, x, (C,), _meta(C)),
    "add_rms_norm": lambda x: fused_norm.add_rms_norm(x, x, (C,), _meta(C)),
}


@pytest.mark.parametrize("op", list(META_PARAMETER_CALLS))
def test_parameters_on_another_device_are_refused(op):
    """The dispatcher sends a CPU input with meta parameters to the fake kernels, which give
    an uninitialised CPU output unless they check devices as the real kernels do."""
    x = torch.randn(4, C, 3)
    with pytest.raises(RuntimeError, match="Expected all tensors to be on the same device"):
        META_PARAMETER_CALLS[op](x.transpose(1, 2).contiguous() if op in (
            "layer_norm", "rms_norm", "dyt", "add_layer_norm", "add_rms_norm") else x)


NOT_A_TENSOR_CALLS = {
    **{name: (lambda name: lambda m, x: getattr(m, name)(x))(name)
       for name in ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
                    "mish", "hardswish", "hardsigmoid", "hardtanh", "softplus", "rrelu")},
    "sigmoid": lambda m, x: (torch if m is F else m).sigmoid(x),
    "tanh": lambda m, x: (torch if m is F else m).tanh(x),
    "prelu": lambda m, x: m.prelu(x, torch.ones(1)),
    "softmax": lambda m, x: m.softmax(x, 0),
    "log_softmax": lambda m, x: m.log_softmax(x, 0),
    "layer_norm": lambda m, x: m.layer_norm(x, (2,)),
    "rms_norm": lambda m, x: m.rms_norm(x, (2,)),
    "group_norm": lambda m, x: m.group_norm(x, 1),
    "batch_norm": lambda m, x: m.batch_norm(x, None, None, training=True),
    "instance_norm": lambda m, x: m.instance_norm(x),
}


_x2, _x3 = torch.randn(3, 4), torch.randn(2, 4, 5)
WRONG_ARGUMENT_CALLS = {
    "softmax-dtype-str": lambda m: m.softmax(_x2, 0, dtype="float32"),
    "prelu-weight-float": lambda m: m.prelu(_x2, 0.25),
    "layer_norm-eps-none": lambda m: m.layer_norm(_x2, (4,), eps=None),
    "layer_norm-eps-tensor": lambda m: m.layer_norm(_x2, (4,), eps=torch.tensor([1e-5])),
    "layer_norm-shape-float": lambda m: m.layer_norm(_x2, [4.0]),
    "layer_norm-shape-tensor": lambda m: m.layer_norm(_x2, torch.tensor([4])),
    "rms_norm-eps-str": lambda m: m.rms_norm(_x2, (4,), eps="1e-5"),
    "group_norm-eps-none": lambda m: m.group_norm(_x3, 2, eps=None),
    "batch_norm-momentum-none": lambda m: m.batch_norm(_x3, None, None, training=True,
                                                       momentum=None),
    "batch_norm-eps-str": lambda m: m.batch_norm(_x3, None, None, training=True, eps="1e-5"),
    "batch_norm-training-none": lambda m: m.batch_norm(_x3, None, None, training=None),
    "batch_norm-training-int": lambda m: m.batch_norm(_x3, None, None, training=1),
    "instance_norm-use-input-stats-int": lambda m: m.instance_norm(_x3, use_input_stats=1),
    "instance_norm-momentum-none": lambda m: m.instance_norm(_x3, momentum=None),
    "instance_norm-one-dim": lambda m: m.instance_norm(torch.randn(4)),
    "leaky_relu-slope-str": lambda m: m.leaky_relu(_x2, "0.2"),
    "leaky_relu-slope-tensor": lambda m: m.leaky_relu(_x2, torch.tensor([0.2, 0.3])),
    "elu-alpha-none": lambda m: m.elu(_x2, None),
    "celu-alpha-str": lambda m: m.celu(_x2, "1.0"),
    "hardtanh-bounds-str": lambda m: m.hardtanh(_x2, "-1", "1"),
    "softplus-beta-none": lambda m: m.softplus(_x2, None),
}


@pytest.mark.parametrize("case", list(WRONG_ARGUMENT_CALLS))
def test_arguments_of_the_wrong_type_get_torchs_error(case):
    call = WRONG_ARGUMENT_CALLS[case]
    with pytest.raises(Exception) as expected:
        call(F)
    with pytest.raises(expected.type):
        call(fused_norm)


@pytest.mark.parametrize("op", list(NOT_A_TENSOR_CALLS))
def test_input_that_is_not_a_tensor_gets_torchs_error(op):
    """torch's TypeError from its argument parser, or, for the functions that read the input's
    attributes first in Python (softmax, batch_norm, ...), its AttributeError."""
    call = NOT_A_TENSOR_CALLS[op]
    with pytest.raises((TypeError, AttributeError)) as expected:
        call(F, [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(expected.type):
        call(fused_norm, [[1.0, 2.0], [3.0, 4.0]])


DYNAMIC_CALLS = {
    "layer_norm": lambda x: fused_norm.layer_norm(x, x.shape[-1:]),
    "rms_norm": lambda x: fused_norm.rms_norm(x, x.shape[-1:]),
    "add_layer_norm": lambda x: fused_norm.add_layer_norm(x, x, x.shape[-1:]),
    "softmax": lambda x: fused_norm.softmax(x, -1),
    "gelu": lambda x: fused_norm.gelu(x),
}


@pytest.mark.parametrize("op", list(DYNAMIC_CALLS))
def test_compile_with_dynamic_shapes_compiles_once(op):
    """As torch's functions: argument checks look at types, never at a size's value, which
    would make torch.compile specialize on it and compile again for every size."""
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(DYNAMIC_CALLS[op], dynamic=True, fullgraph=True, backend="eager")
    for n in (8, 12, 16):
        x = torch.randn(4, n)
        assert_close(compiled(x), DYNAMIC_CALLS[op](x), torch.float32, "fwd")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
