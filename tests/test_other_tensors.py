"""Tensors our kernels do not take: nested (jagged) tensors, sparse and quantized tensors and
DTensors go to torch's own function (_ops.defer_to_torch), so that they get torch's result or
torch's error; meta tensors run our ops' fake kernels, with torch's output shapes and dtypes."""

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import fused_norm

D = 8


def _weights():
    generator = torch.Generator().manual_seed(1)
    return tuple(torch.randn(D, dtype=torch.float64, generator=generator) for _ in range(2))


def _gelu_tanh(x):
    return fused_norm.gelu(x, approximate="tanh")


# (id, our function of x, with its parameters bound) over the last dimension of D elements.
ROW_FUNCTIONS = [
    ("layer_norm", lambda x: fused_norm.layer_norm(x, (D,), *_weights())),
    ("rms_norm", lambda x: fused_norm.rms_norm(x, (D,), _weights()[0])),
    ("add_layer_norm", lambda x: fused_norm.add_layer_norm(x, x * 0.5, D, *_weights(), alpha=0.3)),
    ("add_rms_norm_prenorm",
     lambda x: fused_norm.add_rms_norm(x, x.sin(), D, _weights()[0], prenorm=True)[1]),
    ("softmax", lambda x: fused_norm.softmax(x, -1)),
    ("dyt", lambda x: fused_norm.dyt(x, torch.tensor([0.7], dtype=torch.float64), *_weights())),
    ("swiglu", lambda x: fused_norm.swiglu(x)),
    ("geglu_two_inputs", lambda x: fused_norm.geglu(x, x.cos())),
    ("relu", fused_norm.relu), ("gelu", fused_norm.gelu), ("gelu_tanh", _gelu_tanh),
    ("silu", fused_norm.silu), ("mish", fused_norm.mish), ("sigmoid", fused_norm.sigmoid),
    ("tanh", fused_norm.tanh), ("elu", fused_norm.elu),
    ("softplus", lambda x: fused_norm.softplus(x, 2.0, 5.0)),
]
# Not here: log_softmax, hardswish and leaky_relu, whose jagged forms torch 2.14 lacks (forward
# or backward): ours raise torch's NotImplementedError there.


@pytest.mark.parametrize("name,fn", ROW_FUNCTIONS, ids=[name for name, _ in ROW_FUNCTIONS])
def test_jagged_nested_input_as_per_sequence(name, fn):
    """A jagged batch of sequences of lengths 3, 1 and 5: each output sequence is what our
    kernels give for that sequence alone, and the gradient flows back to the components."""
    torch.manual_seed(0)
    sequences = [torch.randn(n, D, dtype=torch.float64, requires_grad=True) for n in (3, 1, 5)]
    nested = torch.nested.as_nested_tensor(sequences, layout=torch.jagged)
    out = fn(nested)
    assert out.is_nested
    for got, sequence in zip(out.unbind(), sequences):
        torch.testing.assert_close(got, fn(sequence.detach()))
    out.values().sum().backward()
    for sequence in sequences:
        expected, = torch.autograd.grad(fn(sequence).sum(), sequence)
        torch.testing.assert_close(sequence.grad, expected)


def _outcome(fn, x):
    try:
        return "ok", fn(x)
    except Exception as error:  # noqa: BLE001 - the exception type is what is compared
        return "raise", type(error)


# (id, ours, torch's) on a 2-D sparse COO or quantized [4, D] input.
PAIRS = [
    ("layer_norm", lambda x: fused_norm.layer_norm(x, (D,)), lambda x: F.layer_norm(x, (D,))),
    ("rms_norm", lambda x: fused_norm.rms_norm(x, (D,)), lambda x: F.rms_norm(x, (D,))),
    ("batch_norm", lambda x: fused_norm.batch_norm(x, None, None, training=True),
     lambda x: F.batch_norm(x, None, None, training=True)),
    ("group_norm", lambda x: fused_norm.group_norm(x, 2), lambda x: F.group_norm(x, 2)),
    ("softmax", lambda x: fused_norm.softmax(x, -1), lambda x: F.softmax(x, -1)),
    ("relu", fused_norm.relu, F.relu), ("gelu", fused_norm.gelu, F.gelu),
    ("hardtanh", fused_norm.hardtanh, F.hardtanh), ("silu", fused_norm.silu, F.silu),
]
OTHER_TENSORS = [
    ("sparse_coo", lambda: torch.randn(4, D).relu().to_sparse()),
    ("sparse_csr", lambda: torch.randn(4, D).relu().to_sparse_csr()),
    ("quantized", lambda: torch.quantize_per_tensor(torch.randn(4, D), 0.1, 10, torch.quint8)),
]


@pytest.mark.parametrize("kind,make", OTHER_TENSORS, ids=[k for k, _ in OTHER_TENSORS])
@pytest.mark.parametrize("name,ours,theirs", PAIRS, ids=[p[0] for p in PAIRS])
def test_sparse_and_quantized_input_as_torch(kind, make, name, ours, theirs):
    x = make()
    (our_kind, ours_out), (their_kind, theirs_out) = _outcome(ours, x), _outcome(theirs, x)
    assert our_kind == their_kind, (ours_out, theirs_out)
    if our_kind == "raise":
        assert ours_out is theirs_out
        return
    assert ours_out.layout == theirs_out.layout and ours_out.dtype == theirs_out.dtype
    as_dense = (lambda t: t.dequantize()) if kind == "quantized" else (lambda t: t.to_dense())
    torch.testing.assert_close(as_dense(ours_out), as_dense(theirs_out))


@pytest.mark.parametrize("ours,theirs,shape", [
    (fused_norm.LayerNorm(5), nn.LayerNorm(5), (4, 8, 5, 5)),
    (fused_norm.RMSNorm(5), nn.RMSNorm(5), (4, 8, 5, 5)),
    (fused_norm.GroupNorm(2, 8), nn.GroupNorm(2, 8), (4, 8, 5, 5)),
    (fused_norm.BatchNorm2d(8), nn.BatchNorm2d(8), (4, 8, 5, 5)),
    (fused_norm.InstanceNorm2d(8, affine=True, track_running_stats=True),
     nn.InstanceNorm2d(8, affine=True, track_running_stats=True), (4, 8, 5, 5)),
    (fused_norm.Softmax(1), nn.Softmax(1), (4, 8, 5, 5)),
    (fused_norm.PReLU(8), nn.PReLU(8), (4, 8, 5, 5)),
    (fused_norm.GELU(), nn.GELU(), (4, 8, 5, 5)),
], ids=lambda v: type(v).__name__ if isinstance(v, nn.Module) else "")
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last],
                         ids=["contiguous", "channels_last"])
def test_meta_tensors(ours, theirs, shape, memory_format):
    """Shapes and dtypes as torch's on meta tensors, strides as our kernels' on the CPU (torch's
    meta GroupNorm returns a contiguous tensor where its CPU kernel keeps channels_last)."""
    on_cpu = ours
    ours, theirs = copy.deepcopy(ours).to("meta"), theirs.to("meta")
    x = torch.empty(shape, device="meta").contiguous(memory_format=memory_format)
    real = torch.randn(shape).contiguous(memory_format=memory_format)
    for training in (True, False):
        y, expected = ours.train(training)(x), theirs.train(training)(x)
        assert y.device.type == "meta"
        assert (y.shape, y.dtype) == (expected.shape, expected.dtype)
        assert y.stride() == on_cpu.train(training)(real).stride()


@pytest.fixture
def one_process_group(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    dist.destroy_process_group()


DTENSOR_FUNCTIONS = [
    ("layer_norm", lambda x, w: fused_norm.layer_norm(x, (D,), w),
     lambda x, w: F.layer_norm(x, (D,), w)),
    ("rms_norm", lambda x, w: fused_norm.rms_norm(x, (D,), w), lambda x, w: F.rms_norm(x, (D,), w)),
    ("add_rms_norm", lambda x, w: fused_norm.add_rms_norm(x, x, (D,), w),
     lambda x, w: F.rms_norm(x + x, (D,), w)),
    ("softmax", lambda x, w: fused_norm.softmax(x * w, -1), lambda x, w: F.softmax(x * w, -1)),
    ("gelu", lambda x, w: fused_norm.gelu(x * w), lambda x, w: F.gelu(x * w)),
    ("silu", lambda x, w: fused_norm.silu(x * w), lambda x, w: F.silu(x * w)),
]


@pytest.mark.parametrize("name,ours,theirs", DTENSOR_FUNCTIONS,
                         ids=[f[0] for f in DTENSOR_FUNCTIONS])
def test_dtensor_input_as_torch(one_process_group, name, ours, theirs):
    """Tensor parallelism hands norms and activations DTensors (sharded along the sequence):
    they get torch's function, with its placements and gradients."""
    from torch.distributed.tensor import DeviceMesh, Replicate, Shard, distribute_tensor

    mesh = DeviceMesh("cpu", [0])
    torch.manual_seed(0)
    x = distribute_tensor(torch.randn(6, D, dtype=torch.float64), mesh, [Shard(0)])
    w = distribute_tensor(torch.randn(D, dtype=torch.float64), mesh, [Replicate()])
    results = []
    for fn in (ours, theirs):
        x_, w_ = x.detach().requires_grad_(), w.detach().requires_grad_()
        y = fn(x_, w_)
        y.sum().backward()
        results.append((y, x_.grad, w_.grad))
    for got, expected in zip(*results):
        assert got.placements == expected.placements
        torch.testing.assert_close(got.full_tensor(), expected.full_tensor())


def test_compile_keeps_our_ops_with_dtensor_imported(one_process_group):
    """With torch.distributed.tensor imported, the DTensor check traces away: plain tensors
    still compile to our ops, in one graph."""
    import torch.distributed.tensor  # noqa: F401

    torch._dynamo.reset()
    x, w = torch.randn(4, D), torch.randn(D)
    graphs = []

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    compiled = torch.compile(lambda x, w: fused_norm.gelu(fused_norm.rms_norm(x, (D,), w)),
                             backend=backend, fullgraph=True)
    torch.testing.assert_close(compiled(x, w), fused_norm.gelu(fused_norm.rms_norm(x, (D,), w)))
    assert len(graphs) == 1
    assert "fused_norm.rms_norm_fwd" in graphs[0].code
    assert "fused_norm.activation_fwd" in graphs[0].code
