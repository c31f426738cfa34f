"""torch.func transforms (vmap, grad, vjp, jvp, jacrev, hessian) and forward-mode AD over every
public function, as over torch.nn.functional's.

Under a transform the functions run torch's own function, or a fused op's plain-torch
composition (_ops.under_function_transform): our ops' C++ autograd serves neither functorch's
grad transforms nor forward-mode AD. So each transform here is checked against our kernels run
outside it, in float64: vmap against the per-sample calls, vjp against autograd.grad through
our backward, jvp and forward AD against that vjp (<v, J t> = <J^T v, t>), hessian against our
double backward.
"""

import copy
import warnings

import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F

import fused_norm
from fused_norm import _ops

F64 = torch.float64


def randn(*shape):
    return torch.randn(*shape, dtype=F64)


def positive(*shape):
    return torch.rand(*shape, dtype=F64) + 0.5


# (id, function of the tensors, the tensors). The first tensor is the one vmap batches.
CASES = [
    ("layer_norm", lambda x, w, b: fused_norm.layer_norm(x, (8,), w, b),
     lambda: (randn(3, 4, 8), randn(8), randn(8))),
    ("layer_norm_2d_shape", lambda x: fused_norm.layer_norm(x, (4, 8)), lambda: (randn(3, 4, 8),)),
    ("rms_norm", lambda x, w: fused_norm.rms_norm(x, (8,), w), lambda: (randn(3, 4, 8), randn(8))),
    ("add_layer_norm_prenorm",
     lambda x, r, w, b: fused_norm.add_layer_norm(x, r, 8, w, b, alpha=0.7, prenorm=True),
     lambda: (randn(3, 8), randn(3, 8), randn(8), randn(8))),
    ("add_rms_norm_zero_centered",
     lambda x, r, w: fused_norm.add_rms_norm(x, r, 8, w, zero_centered_weight=True),
     lambda: (randn(3, 8), randn(3, 8), randn(8))),
    ("add_rms_norm_no_residual", lambda x, w: fused_norm.add_rms_norm(x, None, 8, w),
     lambda: (randn(3, 8), randn(8))),
    ("batch_norm", lambda x, w, b: fused_norm.batch_norm(x, None, None, w, b, training=True),
     lambda: (randn(4, 3, 5), randn(3), randn(3))),
    ("batch_norm_eval",
     lambda x, w, b: fused_norm.batch_norm(x, torch.full((3,), 0.2, dtype=F64),
                                           torch.full((3,), 1.5, dtype=F64), w, b),
     lambda: (randn(4, 3, 5), randn(3), randn(3))),
    ("batch_norm_add_relu",
     lambda x, r, w, b: fused_norm.batch_norm_add_relu(x, r, None, None, w, b, training=True),
     lambda: (randn(4, 3, 5), randn(4, 3, 5), randn(3), randn(3))),
    ("group_norm", lambda x, w, b: fused_norm.group_norm(x, 3, w, b),
     lambda: (randn(2, 6, 5), randn(6), randn(6))),
    ("group_norm_silu", lambda x, w, b: fused_norm.group_norm_act(x, 2, w, b, activation="silu"),
     lambda: (randn(2, 4, 3, 3), randn(4), randn(4))),
    ("instance_norm", lambda x, w, b: fused_norm.instance_norm(x, weight=w, bias=b),
     lambda: (randn(2, 3, 7), randn(3), randn(3))),
    ("softmax", lambda x: fused_norm.softmax(x, dim=1), lambda: (randn(3, 5, 4),)),
    ("log_softmax", lambda x: fused_norm.log_softmax(x, dim=-1), lambda: (randn(3, 6),)),
    ("swiglu", lambda x: fused_norm.swiglu(x), lambda: (randn(3, 8),)),
    ("geglu_two_inputs", lambda a, b: fused_norm.geglu(a, b, approximate="tanh"),
     lambda: (randn(3, 4), randn(3, 4))),
    ("dyt", lambda x, a, w, b: fused_norm.dyt(x, a, w, b),
     lambda: (randn(3, 8), torch.tensor([0.7], dtype=F64), randn(8), randn(8))),
    ("prelu", lambda x, w: fused_norm.prelu(x, w), lambda: (randn(2, 3, 4), positive(3) - 0.7)),
    ("rrelu_eval", lambda x: fused_norm.rrelu(x), lambda: (randn(3, 7),)),
] + [
    (name, getattr(fused_norm, name), lambda: (3 * randn(3, 7),))
    for name in ("relu", "relu6", "leaky_relu", "elu", "selu", "celu", "gelu", "silu",
                 "hardswish", "hardsigmoid", "hardtanh", "mish", "sigmoid", "tanh", "softplus")
]
IDS = [case[0] for case in CASES]


def grad_rtol(fn):
    """torch's Hardsigmoid backward multiplies by 1/6 rounded to float even in float64 (ours by
    the double): their gradients differ by float's rounding there."""
    return 1e-7 if fn is fused_norm.hardsigmoid else 1e-9


def as_tuple(outputs):
    return outputs if isinstance(outputs, tuple) else (outputs,)


def kernel_vjp(fn, inputs, cotangents):
    """(outputs, J^T v) through our kernels and their backward, outside any transform."""
    leaves = [t.detach().requires_grad_() for t in inputs]
    outputs = as_tuple(fn(*leaves))
    grads = torch.autograd.grad(outputs, leaves, cotangents, allow_unused=True)
    return outputs, [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def cotangents_for(outputs):
    return tuple(randn(*o.shape) for o in outputs)


def dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b))


def test_transforms_are_detected():
    """The check that picks torch's functions: on under each transform, off outside."""
    x = randn(3)
    seen = []

    def probe(t):
        seen.append(_ops.under_function_transform())
        return t.sin().sum()

    assert not _ops.under_function_transform()
    torch.func.grad(probe)(x)
    torch.func.vmap(probe)(x[:, None])
    torch.func.jvp(probe, (x,), (x,))
    with fwAD.dual_level():
        probe(x)
    assert seen == [True, True, True, True]
    assert not _ops.under_function_transform()


@pytest.mark.parametrize("fn,make", [c[1:] for c in CASES], ids=IDS)
def test_vjp_and_grad(fn, make):
    torch.manual_seed(0)
    inputs = make()
    outputs, vjp_fn = torch.func.vjp(fn, *inputs)
    outputs = as_tuple(outputs)
    cotangents = cotangents_for(outputs)
    expected_outputs, expected_grads = kernel_vjp(fn, inputs, cotangents)
    for got, want in zip(outputs, expected_outputs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    grads = vjp_fn(cotangents if len(cotangents) > 1 else cotangents[0])
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=grad_rtol(fn), atol=1e-10)
    # grad of a scalar loss, as training code writes it.
    argnums = tuple(range(len(inputs)))
    loss_grads = torch.func.grad(lambda *t: dot(as_tuple(fn(*t)), cotangents), argnums)(*inputs)
    for got, want in zip(loss_grads, expected_grads):
        torch.testing.assert_close(got, want, rtol=grad_rtol(fn), atol=1e-10)


@pytest.mark.parametrize("fn,make", [c[1:] for c in CASES], ids=IDS)
def test_jvp_and_forward_ad(fn, make):
    torch.manual_seed(0)
    inputs = make()
    tangents = tuple(randn(*t.shape) for t in inputs)
    outputs, jvp_out = torch.func.jvp(fn, inputs, tangents)
    outputs, jvp_out = as_tuple(outputs), as_tuple(jvp_out)
    cotangents = cotangents_for(outputs)
    expected_outputs, vjp = kernel_vjp(fn, inputs, cotangents)
    for got, want in zip(outputs, expected_outputs):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    expected = dot(vjp, tangents)
    torch.testing.assert_close(dot(cotangents, jvp_out), expected, rtol=grad_rtol(fn),
                               atol=1e-10)

    with fwAD.dual_level():
        duals = [fwAD.make_dual(t, d) for t, d in zip(inputs, tangents)]
        forward_tangents = [fwAD.unpack_dual(o).tangent for o in as_tuple(fn(*duals))]
    torch.testing.assert_close(dot(cotangents, forward_tangents), expected, rtol=grad_rtol(fn),
                               atol=1e-10)


@pytest.mark.parametrize("fn,make", [c[1:] for c in CASES], ids=IDS)
def test_vmap(fn, make):
    torch.manual_seed(0)
    samples = [make() for _ in range(3)]
    rest = samples[0][1:]
    batch = torch.stack([s[0] for s in samples])
    with warnings.catch_warnings():
        # torch's per-sample fallback warns; the functions must not take it.
        warnings.simplefilter("error")
        outputs = as_tuple(torch.func.vmap(fn, in_dims=(0,) + (None,) * len(rest))(batch, *rest))
    per_sample = [as_tuple(fn(s[0], *rest)) for s in samples]
    for k, got in enumerate(outputs):
        torch.testing.assert_close(got, torch.stack([p[k] for p in per_sample]), rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("name,fn,shape", [
    ("layer_norm", lambda x: fused_norm.layer_norm(x, (5,)), (2, 5)),
    ("rms_norm", lambda x: fused_norm.rms_norm(x, (5,)), (2, 5)),
    ("group_norm", lambda x: fused_norm.group_norm(x, 2, None, None), (1, 4, 3)),
    ("softmax", lambda x: fused_norm.softmax(x, -1), (2, 5)),
    ("gelu", fused_norm.gelu, (7,)),
], ids=lambda v: v if isinstance(v, str) else "")
def test_hessian_matches_our_double_backward(name, fn, shape):
    torch.manual_seed(0)
    x = randn(*shape)
    weights = randn(*shape)

    def loss(t):
        return (fn(t) * weights).sin().sum()

    expected = torch.autograd.functional.hessian(loss, x)  # our backward's own backward
    torch.testing.assert_close(torch.func.hessian(loss)(x), expected, rtol=1e-8, atol=1e-9)


def test_batch_norm_running_stats_under_grad():
    """Training BatchNorm under torch.func.grad updates its running statistics as our kernels
    do outside it."""
    torch.manual_seed(0)
    x, w, b = randn(4, 3, 5), randn(3), randn(3)
    stats = [(torch.zeros(3, dtype=F64), torch.ones(3, dtype=F64)) for _ in range(2)]
    fused_norm.batch_norm(x, *stats[0], w, b, training=True, momentum=0.3)
    torch.func.grad(lambda t: fused_norm.batch_norm(t, *stats[1], w, b, True, 0.3).sum())(x)
    for got, want in zip(stats[1], stats[0]):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_add_norm_dropout_under_vjp():
    """With dropout, h = dropout(x) + residual: under a transform the mask is torch's dropout's,
    and the gradient to x is the cotangent of h through that mask."""
    torch.manual_seed(0)
    x, r = randn(64, 32), randn(64, 32)
    (y, h), vjp_fn = torch.func.vjp(
        lambda x: fused_norm.add_rms_norm(x, r, 32, dropout_p=0.5, prenorm=True), x)
    kept = h != r
    assert 0.3 < kept.double().mean() < 0.7
    torch.testing.assert_close(h[kept], (2 * x + r)[kept])
    dh = randn(64, 32)
    (dx,) = vjp_fn((torch.zeros_like(y), dh))
    torch.testing.assert_close(dx, torch.where(kept, 2 * dh, 0))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_per_sample_gradients_of_a_converted_model(kind):
    """torch.func's per-sample gradients (vmap over grad of functional_call), as Opacus-style
    training computes them, through a model converted to fused_norm equal the torch model's.
    The CNN's BatchNorm is patched by torch.func.replace_all_batch_norm_modules_ (no running
    statistics under vmap), as torch.func's documentation has it; its BatchNorm + ReLU and
    GroupNorm + SiLU pairs are fused by convert."""
    torch.manual_seed(0)
    if kind == "mlp":
        model = torch.nn.Sequential(
            torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.GELU(), torch.nn.Linear(8, 8),
            torch.nn.RMSNorm(8), torch.nn.SiLU(), torch.nn.Linear(8, 3), torch.nn.LogSoftmax(-1),
        ).double()
        x = randn(5, 6)
    else:
        model = torch.nn.Sequential(
            torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
            torch.nn.GroupNorm(2, 4), torch.nn.SiLU(), torch.nn.Flatten(), torch.nn.Linear(64, 3),
            torch.nn.LogSoftmax(-1),
        ).double()
        x = randn(5, 3, 6, 6)
    converted = copy.deepcopy(model)
    report = fused_norm.convert(converted)
    # Two norms, two activations and LogSoftmax converted; the CNN's pairs fused besides.
    assert len(report) == (5 if kind == "mlp" else 7), report
    if kind == "cnn":
        assert len(report.fused) == 2, report
        for m in (model, converted):
            torch.func.replace_all_batch_norm_modules_(m)
    target = torch.randint(0, 3, (5,))

    def per_sample_grads(m):
        params = {k: v.detach() for k, v in m.named_parameters()}

        def loss(p, xi, ti):
            out = torch.func.functional_call(m, p, (xi[None],))
            return F.nll_loss(out, ti[None])

        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, target)

    ours, theirs = per_sample_grads(converted), per_sample_grads(model)
    assert ours.keys() == theirs.keys()
    for key in ours:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-10, atol=1e-12)


def test_compile_keeps_our_ops():
    """torch.compile traces our ops, not torch's functions, outside a transform."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return gm.forward

    x = randn(4, 8)
    torch.compile(lambda t: fused_norm.gelu(fused_norm.layer_norm(t, (8,))), backend=backend,
                  fullgraph=True)(x)
    assert "fused_norm.layer_norm_fwd" in graphs[0] and "fused_norm.activation_fwd" in graphs[0]

