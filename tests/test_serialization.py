"""The other frontends a converted model meets on its way to serving: torch.jit.trace (and a
traced model saved and loaded), torch.export in eval and in training mode (and an exported
program saved and loaded), and torch.jit.script, which refuses our modules with a clear error.

Each traced or exported model must hold fused_norm's ops (not torch's) and compute what the
eager model computes: outputs, gradients after loading, and BatchNorm's running statistics."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn

import fused_norm
from test_convert import Transformer, _conv_net, _resnet18_stage


class FusedBlock(nn.Module):
    """fused_norm's own modules, which have no torch.nn class: a pre-norm residual stream
    through AddRMSNorm, SwiGLU, DyT and AddLayerNorm, plus InstanceNorm and Softmax."""

    def __init__(self, dim=16):
        super().__init__()
        self.inp = nn.Linear(dim, dim)
        self.norm1 = fused_norm.AddRMSNorm(dim, prenorm=True)
        self.up = nn.Linear(dim, 4 * dim)
        self.swiglu = fused_norm.SwiGLU()
        self.down = nn.Linear(2 * dim, dim)
        self.dyt = fused_norm.DyT(dim)
        self.norm2 = fused_norm.AddLayerNorm(dim, alpha=0.5)
        self.instance_norm = fused_norm.InstanceNorm1d(4, affine=True, track_running_stats=True)
        self.softmax = fused_norm.Softmax(dim=-1)

    def forward(self, x):
        y, h = self.norm1(self.inp(x), x)
        y = self.norm2(self.dyt(self.down(self.swiglu(self.up(y)))), h)
        return self.softmax(self.instance_norm(y))


def _conv_batch():
    return torch.randn(4, 3, 8, 8)


MODELS = [
    pytest.param(_resnet18_stage, _conv_batch, id="resnet18-stage"),
    pytest.param(_conv_net, _conv_batch, id="fused-conv-net"),
    pytest.param(Transformer, lambda: torch.randint(0, 32, (2, 8)), id="transformer"),
    pytest.param(FusedBlock, lambda: torch.randn(3, 4, 16), id="fused-block"),
]


def _converted(make):
    torch.manual_seed(0)
    model = make()
    fused_norm.convert(model)
    return model


def _fused_norm_ops(op_names):
    return {name for name in op_names if "fused_norm" in name}


def _assert_same_state(model, reference):
    for (name, value), expected in zip(model.state_dict().items(),
                                       reference.state_dict().values()):
        torch.testing.assert_close(value, expected, msg=lambda m: f"{name}\n{m}")


def _grads(model, x):
    model.zero_grad()
    out = model(x)
    out.float().square().sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("make,batch", MODELS)
def test_jit_trace_save_load(make, batch, training):
    model = _converted(make).train(training)
    reference = copy.deepcopy(model)
    x = batch()
    traced = torch.jit.trace(model, x, check_trace=False)
    assert _fused_norm_ops(str(traced.inlined_graph).split()), "no fused_norm op was traced"
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    # Tracing ran the model once: the reference takes that step too.
    reference(x)
    out, grads = _grads(loaded, x)
    expected, expected_grads = _grads(reference, x)
    torch.testing.assert_close(out, expected)
    for grad, expected_grad in zip(grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad)
    _assert_same_state(loaded, reference)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("make,batch", MODELS)
def test_export_save_load(make, batch, training, tmp_path):
    model = _converted(make).train(training)
    reference = copy.deepcopy(model)
    x = batch()
    program = torch.export.export(model, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert _fused_norm_ops(targets), f"no fused_norm op in {sorted(targets)}"
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path).module()
    out = loaded(x)
    torch.testing.assert_close(out, reference(x))
    # In training mode the program updates BatchNorm's and InstanceNorm's running statistics
    # (and num_batches_tracked) as the eager model does.
    _assert_same_state(loaded, reference)


# torch.jit.script warns that it is deprecated (torch 2.14; not every version does).
@pytest.mark.filterwarnings("ignore::FutureWarning")
@pytest.mark.parametrize("make,batch", MODELS)
def test_jit_script_refused_clearly(make, batch):
    model = _converted(make)
    before = [(name, type(m)) for name, m in model.named_modules()]
    with pytest.raises(
            RuntimeError, match=r"torch.jit.script does not support fused_norm\.\w+: use "
                                r"torch.jit.trace, torch.export or torch.compile"):
        torch.jit.script(model)
    # The refusal comes before TorchScript changes anything in the model.
    assert [(name, type(m)) for name, m in model.named_modules()] == before
    # Reverted, the convolutional models script again (the test transformer's own forward is
    # not TorchScript, and FusedBlock's modules have no torch.nn class to revert to).
    if make in (_resnet18_stage, _conv_net):
        fused_norm.revert(model)
        x = batch()
        torch.testing.assert_close(torch.jit.script(model)(x), model(x))


@pytest.mark.parametrize("module", [
    fused_norm.LayerNorm(8), fused_norm.RMSNorm(8), fused_norm.GroupNorm(2, 8),
    fused_norm.BatchNorm1d(8), fused_norm.InstanceNorm1d(8), fused_norm.SyncBatchNorm(8),
    fused_norm.GELU(), fused_norm.PReLU(), fused_norm.Softplus(), fused_norm.LogSoftmax(-1),
    fused_norm.DyT(8), fused_norm.GeGLU(), fused_norm.AddLayerNorm(8),
], ids=lambda m: type(m).__name__)
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_every_module_refuses_script(module):
    with pytest.raises(RuntimeError, match=f"fused_norm.{type(module).__name__}: use"):
        torch.jit.script(module)


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("make,batch", MODELS)
def test_export_dynamic_batch(make, batch, training):
    """A program exported with a symbolic batch size (our fake kernels take symbolic shapes)
    runs another batch size as the eager model does."""
    model = _converted(make).train(training)
    reference = copy.deepcopy(model)
    x = batch()
    program = torch.export.export(model, (x,),
                                  dynamic_shapes=({0: torch.export.Dim("batch", min=2)},))
    other = torch.cat([x, x[:1]])  # one sample more
    torch.testing.assert_close(program.module()(other), reference(other))
