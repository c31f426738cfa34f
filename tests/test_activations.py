"""The elementwise activations (ReLU ... Softplus, PReLU, RReLU): parity with torch over dtypes,
shapes and memory layouts, forward and backward; NaN/inf and special points; gradcheck and
gradgradcheck; opcheck; torch.compile; in-place semantics; bad input.

The oracle is torch evaluated in float64 on the upcast inputs, rounded to the tested dtype; at
special points (exact thresholds, NaN, inf) it is torch in the tested dtype itself.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from conftest import assert_close

ops = torch.ops.fused_norm

DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


class Act:
    """One activation with fixed arguments: ours and torch's, as f(x, inplace) (inplace None
    where torch's has no such argument), with the module pair and the points where it kinks."""

    def __init__(self, name, ours, theirs, modules, kinks=(0.0,), inplace=True):
        self.name, self.ours, self.theirs = name, ours, theirs
        self.modules, self.kinks, self.inplace = modules, kinks, inplace

    def __repr__(self):
        return self.name


def _pair(fn_ours, fn_theirs, inplace=True, **kw):
    if inplace:
        return (lambda x, inplace=False: fn_ours(x, inplace=inplace, **kw),
                lambda x, inplace=False: fn_theirs(x, inplace=inplace, **kw))
    return lambda x, inplace=False: fn_ours(x, **kw), lambda x, inplace=False: fn_theirs(x, **kw)


def _act(name, fn, kw=None, module=None, module_kw=None, kinks=(0.0,), inplace=True):
    kw = kw or {}
    ours, theirs = _pair(getattr(fused_norm, fn), getattr(F, fn), inplace=inplace, **kw)
    modules = None
    if module is not None:
        modules = (lambda: getattr(fused_norm, module)(**(module_kw or {})),
                   lambda: getattr(torch.nn, module)(**(module_kw or {})))
    return Act(name, ours, theirs, modules, kinks, inplace)


ACTS = [
    _act("relu", "relu", module="ReLU"),
    _act("relu6", "relu6", module="ReLU6", kinks=(0.0, 6.0)),
    _act("leaky_relu", "leaky_relu", module="LeakyReLU"),
    _act("leaky_relu-0.2", "leaky_relu", {"negative_slope": 0.2}, "LeakyReLU",
         {"negative_slope": 0.2}),
    _act("rrelu-eval", "rrelu", module="RReLU"),
    _act("elu", "elu", module="ELU"),
    _act("elu-0.5", "elu", {"alpha": 0.5}, "ELU", {"alpha": 0.5}),
    _act("selu", "selu", module="SELU"),
    _act("celu-1.5", "celu", {"alpha": 1.5}, "CELU", {"alpha": 1.5}),
    _act("gelu", "gelu", module="GELU", kinks=(), inplace=False),
    _act("gelu-tanh", "gelu", {"approximate": "tanh"}, "GELU", {"approximate": "tanh"},
         kinks=(), inplace=False),
    _act("silu", "silu", module="SiLU", kinks=()),
    _act("mish", "mish", module="Mish", kinks=()),
    _act("hardswish", "hardswish", module="Hardswish", kinks=(-3.0, 3.0)),
    _act("hardsigmoid", "hardsigmoid", module="Hardsigmoid", kinks=(-3.0, 3.0)),
    _act("hardtanh", "hardtanh", module="Hardtanh", kinks=(-1.0, 1.0)),
    _act("hardtanh-2-1.5", "hardtanh", {"min_val": -2.0, "max_val": 1.5}, "Hardtanh",
         {"min_val": -2.0, "max_val": 1.5}, kinks=(-2.0, 1.5)),
    _act("sigmoid", "sigmoid", module="Sigmoid", kinks=(), inplace=False),
    _act("tanh", "tanh", module="Tanh", kinks=(), inplace=False),
    _act("softplus", "softplus", module="Softplus", kinks=(), inplace=False),
    _act("softplus-2-5", "softplus", {"beta": 2.0, "threshold": 5.0}, "Softplus",
         {"beta": 2.0, "threshold": 5.0}, kinks=(2.5,), inplace=False),
]
INPLACE_ACTS = [a for a in ACTS if a.inplace]


def _away_from_kinks(x, kinks):
    """x nudged off the points where the activation is not differentiable (there torch's own
    CPU kernels disagree between their vector and scalar paths, e.g. Hardswish at 3)."""
    for k in kinks:
        near = (x - k).abs() < 1e-2
        x = torch.where(near, x + 0.05, x)
    return x


def _layouts(device, dtype, kinks):
    """(name, tensor): every shape and memory layout the parity test covers."""
    def randn(*shape):
        x = torch.randn(*shape, device=device, dtype=torch.float32).mul_(3)
        return _away_from_kinks(x, kinks).to(dtype)

    yield "empty", randn(0)
    yield "empty-2d", randn(3, 0)
    yield "one", randn(1)
    yield "odd-17", randn(17)
    yield "pow2", randn(4, 256)
    yield "large", randn(1 << 20)
    yield "strided", randn(3, 4, 5, 12)[..., ::2]
    yield "transposed", randn(64, 33).t()
    yield "offset", randn(1001)[3:]
    yield "channels_last", randn(2, 8, 5, 7).to(memory_format=torch.channels_last)


def _oracle(fn, x, dy):
    """torch's y and dx in float64 on the upcast inputs, rounded to x's dtype."""
    x64 = x.detach().double().requires_grad_()
    y = fn(x64)
    (dx,) = torch.autograd.grad(y, x64, dy.double()) if x.numel() else (torch.zeros_like(x64),)
    return y.detach().to(x.dtype), dx.to(x.dtype)


def _assert_close_dx(act, dx, expected, dtype, msg):
    if act.name == "hardsigmoid" and dtype == torch.float64:
        # torch's float64 hardsigmoid_backward multiplies by 1/6 rounded to float32; ours keeps
        # it in double: they differ at float32's epsilon.
        torch.testing.assert_close(dx, expected, atol=1e-9, rtol=1e-7, equal_nan=True)
    else:
        assert_close(dx, expected, dtype, "bwd", msg=msg)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_parity(device, act, dtype):
    for name, x in _layouts(device, dtype, act.kinks):
        x = x.requires_grad_()
        y = act.ours(x)
        dy = torch.randn_like(y)
        (dx,) = torch.autograd.grad(y, x, dy) if x.numel() else (torch.zeros_like(x),)
        y_ref, dx_ref = _oracle(act.theirs, x, dy)
        assert_close(y, y_ref, dtype, "fwd", msg=f"{act} {name} y")
        _assert_close_dx(act, dx, dx_ref, dtype, f"{act} {name} dx")
        # Output strides as torch's: a dense input's layout (channels_last included) is kept.
        torch_y = act.theirs(x.detach())
        assert y.stride() == torch_y.stride(), f"{act} {name}: strides {y.stride()}"


SPECIAL = [float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1.0, -1.0, 3.0, -3.0, 6.0, 2.5,
           -2.0, 1.5, 5.0, 19.9, 20.0, 20.1, -20.0, 30.0, -30.0, 88.0, -88.0, 100.0, -100.0,
           1e4, -1e4, 1e-30, -1e-30]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_special_points(device, act, dtype):
    """NaN/inf propagate, thresholds and huge |x| behave as torch in the same dtype."""
    # 128 elements: torch's CPU kernels run their vector path on all of them (their scalar tail
    # treats NaN differently for some activations; the vector path is what a tensor gets).
    values = torch.tensor(SPECIAL * 5, device=device, dtype=torch.float64)[:128].to(dtype)
    dy = torch.linspace(-2, 2, len(values), device=device, dtype=torch.float64).to(dtype)
    dy[1] = float("nan")  # a NaN gradient propagates where the derivative lets it
    x = values.clone().requires_grad_()
    y = act.ours(x)
    (dx,) = torch.autograd.grad(y, x, dy)
    xt = values.clone().requires_grad_()
    yt = act.theirs(xt)
    (dxt,) = torch.autograd.grad(yt, xt, dy)
    if act.name == "gelu":
        # torch's float32 and bfloat16 CPU GELU gives NaN at +inf (its vectorized erf); ours
        # gives inf, as torch's float64, float16 and CUDA kernels do.
        differs = (values == float("inf")) & yt.isnan()
        assert (y[differs] == float("inf")).all()
        yt = torch.where(differs, y, yt)
    assert_close(y, yt.detach(), dtype, "fwd", msg=f"{act} y")
    # At the kinks torch's own CPU kernels give one value in their vector path and another in
    # their scalar tail (Hardswish at 3: dy or 1.5 * dy): no single answer to match there.
    smooth = torch.ones_like(values, dtype=torch.bool)
    for k in act.kinks:
        smooth &= values != k
    _assert_close_dx(act, dx[smooth], dxt[smooth], dtype, f"{act} dx")


def test_softplus_overflowing_exp_below_threshold_cpu():
    # With a threshold above 88, exp(beta * x) overflows to inf before the linear branch takes
    # over: log1p(inf) is inf there (our float log1p's correction alone would be inf - inf).
    x = torch.tensor([88.0, 89.0, 100.0, 500.0] * 16)
    y = fused_norm.softplus(x, beta=1.0, threshold=1000.0)
    assert torch.equal(y, F.softplus(x, beta=1.0, threshold=1000.0))


@pytest.mark.parametrize("act", ACTS + [_act("elu-negative-alpha", "elu", {"alpha": -1.0}),
                                 _act("celu-negative-alpha", "celu", {"alpha": -1.0})], ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_signed_zeros_as_torch(act, dtype):
    # +0 and -0 (in torch's vector path: 64 elements) come out with torch's signs, which
    # assert_close does not compare: ELU with a negative alpha gave -0 for +0.
    x = torch.zeros(64, dtype=dtype)
    x[1::2] = -0.0
    assert torch.equal(act.ours(x).signbit(), act.theirs(x).signbit())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_gelu_negative_tail_keeps_relative_precision(device, dtype):
    # GELU's tail z * Phi(z) is tiny for z << 0: computed as 0.5 * (1 + erf) it cancels to the
    # erf's absolute error (torch's float32 CPU GELU returns 0 at z = -6, its float64 GELU at
    # z = -9). Ours takes Phi from erfc (CPU: the A&S form, 2e-2 relative at z = -10; CUDA:
    # normcdf).
    z = torch.linspace(-9, -3, 601, device=device, dtype=torch.float64).to(dtype).double()
    y = fused_norm.gelu(z.to(dtype)).double()
    ref = z * 0.5 * torch.special.erfc(-z * 0.5**0.5)  # torch's float64 GELU cancels too
    assert ((y - ref) / ref).abs().max() < 3e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_tanh_saturates_exactly(device, dtype):
    """Where tanh rounds to +-1 (float32: from 9.0109), it is +-1 exactly, as torch's, and its
    gradient 1 - y^2 is exactly 0."""
    x = torch.tensor([9.0109, 9.5, 12.0, 30.0, 1e4, float("inf")], device=device)
    x = torch.cat([x, -x]).to(dtype).requires_grad_()
    y = fused_norm.tanh(x)
    assert torch.equal(y, torch.tanh(x.detach()))
    assert torch.equal(y.abs(), torch.ones_like(y))
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    assert torch.equal(dx, torch.zeros_like(dx))


@pytest.mark.parametrize("name", ["sigmoid", "silu", "softplus", "mish", "elu", "selu", "celu"])
def test_exp_based_float32_precision_over_exp_range_cpu(name):
    # The CPU exp behind these (our own polynomial exp on AVX-512, at::vec's exp_u20 elsewhere)
    # over its range (exp_u20 flushes to 0 just above the bottom of the normal range), and the
    # expm1 (ELU's family: a series below |x| = 1) and log1p (Softplus) built on it, finely
    # around 0: within a few float32 ulp of the float64 result. (CUDA's __expf is within a few ulp
    # only for the |z| <= 20 where these need it.)
    x = torch.cat([torch.linspace(-80, 88, 1_000_001), torch.linspace(-2, 2, 400_001),
                   torch.linspace(-1e-4, 1e-4, 20_001)])
    y = getattr(fused_norm, name)(x).double()
    ref = getattr(F, name)(x.double())
    normal = ref.abs() > 1e-37
    assert ((y - ref) / ref)[normal].abs().max() < 1e-6


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_gradcheck(device, act):
    x = _away_from_kinks(torch.randn(3, 7, device=device, dtype=torch.float64) * 3, act.kinks)
    x.requires_grad_()
    assert torch.autograd.gradcheck(act.ours, (x,))
    assert torch.autograd.gradgradcheck(act.ours, (x,))


def _prelu_input(device, dtype=torch.float64):
    return _away_from_kinks(torch.randn(2, 3, 4, device=device, dtype=dtype), (0.0,))


@pytest.mark.parametrize("channels", [1, 3])
def test_gradcheck_prelu(device, channels):
    x = _prelu_input(device).requires_grad_()
    w = torch.rand(channels, device=device, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(fused_norm.prelu, (x, w))
    assert torch.autograd.gradgradcheck(fused_norm.prelu, (x, w))


def test_gradcheck_rrelu_with_noise(device):
    x = _prelu_input(device).requires_grad_()
    noise = torch.rand_like(x) * 0.3 + 0.1
    assert torch.autograd.gradcheck(lambda t: ops.rrelu_with_noise_fwd(t, noise)[0], (x,))
    assert torch.autograd.gradgradcheck(lambda t: ops.rrelu_with_noise_fwd(t, noise)[0], (x,))


# (kind, args) of every kernel kind the functions use.
KINDS = [("relu", []), ("leaky_relu", [0.1]), ("elu", [1.0, 1.0, 1.0]),
         ("elu", [1.6732632423543772, 1.0507009873554805, 1.0]), ("gelu", []), ("gelu_tanh", []),
         ("silu", []), ("hardswish", []), ("hardsigmoid", []), ("hardtanh", [0.0, 6.0]),
         ("mish", []), ("sigmoid", []), ("tanh", []), ("softplus", [1.0, 20.0])]


@pytest.mark.parametrize("kind,args", KINDS, ids=[f"{k}-{len(a)}" for k, a in KINDS])
def test_opcheck_activation(device, kind, args):
    for x in (torch.randn(4, 9, device=device, dtype=torch.float64),
              torch.randn(2, 4, 3, 3, device=device).to(memory_format=torch.channels_last),
              torch.randn(6, 8, device=device)[:, ::2]):
        x = _away_from_kinks(x, (0.0, 6.0, 3.0, -3.0)).requires_grad_()
        torch.library.opcheck(ops.activation_fwd, (x, kind, args))
        dy = torch.randn_like(x).requires_grad_()
        torch.library.opcheck(ops.activation_bwd, (dy, x, kind, args))


def test_opcheck_prelu_rrelu(device):
    x = _prelu_input(device).requires_grad_()
    for w in (torch.rand(1, device=device, dtype=torch.float64, requires_grad=True),
              torch.rand(3, device=device, dtype=torch.float64, requires_grad=True)):
        torch.library.opcheck(ops.prelu_fwd, (x, w))
        dy = torch.randn_like(x).requires_grad_()
        torch.library.opcheck(ops.prelu_bwd, (dy, x, w, [True, True]))
        torch.library.opcheck(ops.prelu_bwd, (dy, x, w, [True, False]))
    noise = torch.rand_like(x)
    torch.library.opcheck(ops.rrelu_with_noise_fwd, (x, noise))
    slope = ops.rrelu_with_noise_fwd(x, noise)[1]
    torch.library.opcheck(ops.rrelu_with_noise_bwd, (torch.randn_like(x).requires_grad_(), slope))


def test_compile_fullgraph(device):
    """Every module, compiled as one graph, forward and backward, against eager."""
    layers = [a.modules[0]() for a in ACTS if a.modules is not None]
    layers.insert(3, fused_norm.PReLU(6))
    layers.insert(5, fused_norm.ReLU(inplace=True))
    layers.insert(7, fused_norm.SiLU(inplace=True))
    model = torch.nn.Sequential(*layers).to(device).eval()
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(4, 6, 10, device=device, requires_grad=True)
    y_eager = model(x)
    (g_eager,) = torch.autograd.grad(y_eager.sum(), x)
    y = compiled(x)
    (g,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(y, y_eager)
    torch.testing.assert_close(g, g_eager)


@pytest.mark.parametrize("act", INPLACE_ACTS, ids=repr)
def test_inplace(device, act):
    base = torch.randn(5, 8, device=device) * 3
    # Same object, same values as out of place.
    x = base.clone()
    assert act.ours(x, inplace=True) is x
    torch.testing.assert_close(x, act.theirs(base))
    # Under autograd on a non-leaf: torch's gradient.
    leaf = base.clone().requires_grad_()
    h = leaf * 2
    out = act.ours(h, inplace=True)
    assert out is h
    out.backward(torch.ones_like(out))
    leaf_t = base.clone().requires_grad_()
    act.theirs(leaf_t * 2, inplace=True).backward(torch.ones_like(out))
    torch.testing.assert_close(leaf.grad, leaf_t.grad)
    # On a leaf that requires grad: torch's error.
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in "
                                           "an in-place operation"):
        act.ours(base.clone().requires_grad_(), inplace=True)


@pytest.mark.parametrize("module", [False, True])
def test_relu_saves_its_output_as_torch(device, module):
    """torch's relu keeps its output for the backward, not its input: changing the input in
    place afterwards is fine, changing the output is an error at backward."""
    relu = fused_norm.ReLU() if module else fused_norm.relu
    a = torch.randn(6, device=device, requires_grad=True)
    h = a * 2
    y = relu(h)
    h.add_(1)
    y.backward(torch.ones_like(y))
    torch.testing.assert_close(a.grad, 2 * (a > 0).to(a.dtype))
    y = relu(a * 2)
    y.add_(1)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(torch.ones_like(y))


def test_modules_are_torch_modules():
    for act in ACTS:
        ours, theirs = act.modules[0](), act.modules[1]()
        assert isinstance(ours, type(theirs))
        assert repr(ours) == repr(theirs)
    p = fused_norm.PReLU(4)
    assert list(p.state_dict()) == ["weight"]
    assert torch.equal(p.weight, torch.full((4,), 0.25))
    p.load_state_dict(torch.nn.PReLU(4).state_dict())


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape,channels,channels_last", [
    ((7,), 1, False), ((5, 3), 3, False), ((5, 3), 1, False), ((2, 4, 33), 4, False),
    ((2, 4, 5, 6), 4, True), ((2, 3, 40000), 3, False), ((1, 1, 70000), 1, False),
    ((0, 3, 4), 3, False),
])
def test_prelu(device, dtype, shape, channels, channels_last):
    x = torch.randn(shape, device=device, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.rand(channels, device=device, dtype=dtype) * 0.5).requires_grad_()
    y = fused_norm.prelu(x, w)
    dy = torch.randn_like(y)
    dx, dw = torch.autograd.grad(y, (x, w), dy)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = F.prelu(x64, w64)
    dx64, dw64 = torch.autograd.grad(y64, (x64, w64), dy.double())
    assert_close(y, y64.to(dtype), dtype, "fwd", msg="y")
    assert_close(dx, dx64.to(dtype), dtype, "bwd", msg="dx")
    assert_close(dw, dw64.to(dtype), dtype, "wgrad", rows=x.numel() // channels, msg="dweight")
    assert y.stride() == F.prelu(x.detach(), w.detach()).stride()


def test_prelu_deterministic(device):
    x = torch.randn(8, 4, 50000, device=device)
    w = torch.rand(4, device=device, requires_grad=True)
    dy = torch.randn_like(x)
    grads = [torch.autograd.grad(fused_norm.prelu(x, w), w, dy)[0] for _ in range(3)]
    assert all(torch.equal(g, grads[0]) for g in grads)


def test_rrelu_training(device):
    x = torch.randn(64, 100, device=device, requires_grad=True)
    torch.manual_seed(123)
    y1 = fused_norm.rrelu(x, 0.1, 0.3, training=True)
    torch.manual_seed(123)
    y2 = fused_norm.rrelu(x, 0.1, 0.3, training=True)
    y3 = fused_norm.rrelu(x, 0.1, 0.3, training=True)
    assert torch.equal(y1, y2)  # torch.manual_seed reproduces the slopes
    assert not torch.equal(y1, y3)
    neg = x.detach() < 0
    slope = y1.detach()[neg] / x.detach()[neg]
    assert slope.min() >= 0.1 and slope.max() <= 0.3
    assert torch.equal(y1.detach()[~neg], x.detach()[~neg])
    # The gradient uses the same slopes as the forward.
    (dx,) = torch.autograd.grad(y1, x, torch.ones_like(y1))
    torch.testing.assert_close(dx[neg], slope)
    assert torch.equal(dx[~neg], torch.ones_like(dx[~neg]))
    # Module: training draws, eval uses the mean slope like torch.
    m, t = fused_norm.RReLU(0.1, 0.3), torch.nn.RReLU(0.1, 0.3)
    m.eval(), t.eval()
    torch.testing.assert_close(m(x), t(x))


@pytest.mark.parametrize("ours,theirs,args", [
    (fused_norm.prelu, F.prelu,
     lambda x: (x, torch.full((3,), 0.25, device=x.device, dtype=x.dtype))),
    (fused_norm.softplus, F.softplus, lambda x: (x,)),
], ids=["prelu", "softplus"])
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
def test_autocast_dtypes_as_torch(device, ours, theirs, args, x_dtype):
    """The two activations torch gives an autocast policy: prelu runs in the region's dtype (CPU
    and CUDA), softplus in float32 (CUDA)."""
    x = torch.randn(2, 3, 5, device=device, dtype=x_dtype)
    region = torch.bfloat16 if device == "cpu" else torch.float16
    with torch.autocast(device, dtype=region):
        expected = theirs(*args(x))
        got = ours(*args(x))
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("act", ACTS, ids=repr)
def test_integer_and_bool_input_as_torch(act):
    for dtype in (torch.long, torch.int32, torch.bool):
        x = torch.ones(3, dtype=dtype)
        try:
            expected = act.theirs(x)
        except Exception as error:  # noqa: BLE001  (torch's exception type is the expectation)
            with pytest.raises(type(error), match=str(error).split("\n")[0][:40]):
                act.ours(x)
        else:
            got = act.ours(x)
            assert got.dtype == expected.dtype and torch.equal(got, expected)


def test_bad_input(device):
    x = torch.randn(4, device=device)
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh."):
        F.gelu(x, approximate="foo")
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh."):
        fused_norm.gelu(x, approximate="foo")
    with pytest.raises(RuntimeError, match="approximate argument must be either none or tanh."):
        fused_norm.GELU(approximate="foo")(x)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        ops.activation_fwd(x, "swish", [])
    with pytest.raises(ValueError, match="takes 1 arguments, but got 0"):
        ops.activation_fwd(x, "leaky_relu", [])
    with pytest.raises(NotImplementedError, match="\"gelu\" not implemented for 'Long'"):
        ops.activation_fwd(torch.ones(3, dtype=torch.long, device=device), "gelu", [])
    with pytest.raises(RuntimeError, match="expected grad_out of shape"):
        ops.activation_bwd(torch.randn(5, device=device), x, "relu", [])
    for ours, theirs in ((fused_norm.celu, F.celu), (fused_norm.hardtanh, F.hardtanh),
                         (fused_norm.rrelu, F.rrelu)):
        args = {fused_norm.celu: (0.0,), fused_norm.hardtanh: (2.0, 1.0),
                fused_norm.rrelu: (0.5, 0.1, True)}[ours]
        with pytest.raises(Exception) as expected:
            theirs(x, *args)
        with pytest.raises(expected.type, match=str(expected.value)[:30]):
            ours(x, *args)
    # NaN and infinite bounds: torch's NaN output and torch's errors.
    nan, inf = float("nan"), float("inf")
    for lo, hi in ((nan, 1.0), (-1.0, nan)):
        assert torch.equal(fused_norm.hardtanh(x, lo, hi).isnan(), F.hardtanh(x, lo, hi).isnan())
    for lo, hi in ((nan, 0.3), (0.1, inf), (-inf, 0.3)):
        for training in (False, True):
            with pytest.raises(RuntimeError, match="bound must be finite"):
                fused_norm.rrelu(x, lo, hi, training)
    with pytest.raises(TypeError, match="argument 'approximate' must be str, not NoneType"):
        F.gelu(x, approximate=None)
    with pytest.raises(TypeError, match="argument 'approximate' must be str, not NoneType"):
        fused_norm.gelu(x, approximate=None)
    # gelu's approximate is keyword-only, as torch's.
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        F.gelu(x, "tanh")
    with pytest.raises(TypeError, match="takes 1 positional argument but 2 were given"):
        fused_norm.gelu(x, "tanh")
    # PReLU: torch's checks and words (a weight of another dtype included).
    x3 = torch.randn(2, 4, 5, device=device)
    for w in (torch.rand(3, device=device), torch.rand(2, 2, device=device),
              torch.rand(4, device=device, dtype=torch.float64),
              torch.rand(4, device=device, dtype=torch.bfloat16)):
        with pytest.raises(RuntimeError) as expected:
            F.prelu(x3, w)
        with pytest.raises(RuntimeError, match=str(expected.value).split("\n")[0][:40]):
            fused_norm.prelu(x3, w)
