"""fold_batch_norm: eval-mode BatchNorm folded into the preceding Conv/ConvTranspose/Linear.

Every folding test compares the model's output before and after folding on the same input, with
non-trivial running statistics and affine parameters (random buffers, or a few training steps).
"""

from __future__ import annotations

import collections
import copy

import pytest
import torch
from torch import nn

import fused_norm
from fused_norm.fold import fold_batch_norm

DTYPES = [torch.float32, torch.float64]
# float32: the float64 fold is rounded once to float32, and the folded layer accumulates in a
# different order than conv followed by BN; float64: both sides are float64 end to end.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float64: dict(atol=1e-10, rtol=1e-10)}


def randomize_bn(model: nn.Module) -> nn.Module:
    """Non-trivial running stats and affine parameters for every BatchNorm in ``model``."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                if m.running_mean is not None:
                    m.running_mean.normal_(0.0, 2.0)
                    m.running_var.uniform_(0.2, 3.0)
                if m.weight is not None:
                    m.weight.normal_(0.0, 1.5)
                    m.bias.normal_(0.0, 1.0)
    return model


def bn_count(model: nn.Module) -> int:
    return sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def check_fold(model: nn.Module, x: torch.Tensor, dtype=torch.float32, expect_folds=None, **kw):
    """Fold a copy of ``model`` (eval mode) and compare outputs; return the folded model."""
    model = model.to(dtype).eval()
    x = x.to(dtype)
    with torch.no_grad():
        ref = model(x)
    before = bn_count(model)
    folded = fold_batch_norm(model, **kw)
    with torch.no_grad():
        out = folded(x)
    torch.testing.assert_close(out, ref, **TOL[dtype])
    if expect_folds is not None:
        assert before - bn_count(folded) == expect_folds
    return folded


# ------------------------------------------------------------------------------------------
# Outputs match


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_bn2d_relu(dtype):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                       nn.ReLU()))
    folded = check_fold(model, torch.randn(2, 3, 10, 10), dtype, expect_folds=1)
    assert type(folded[0]) is nn.Conv2d
    assert isinstance(folded[1], nn.Identity)
    assert isinstance(folded[2], nn.ReLU)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv1d_bn1d(dtype):
    model = randomize_bn(nn.Sequential(nn.Conv1d(4, 6, 3), nn.BatchNorm1d(6)))
    check_fold(model, torch.randn(3, 4, 17), dtype, expect_folds=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv3d_bn3d(dtype):
    model = randomize_bn(nn.Sequential(nn.Conv3d(2, 4, 3, padding=1, stride=2),
                                       nn.BatchNorm3d(4)))
    check_fold(model, torch.randn(2, 2, 6, 7, 5), dtype, expect_folds=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_bn1d(dtype):
    model = randomize_bn(nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh()))
    check_fold(model, torch.randn(9, 5), dtype, expect_folds=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_without_bias_gets_one(dtype):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 5, 3, bias=False), nn.BatchNorm2d(5)))
    keys_before = set(model[0].state_dict())
    folded = check_fold(model, torch.randn(2, 3, 8, 8), dtype, expect_folds=1)
    assert keys_before == {"weight"}
    assert set(folded[0].state_dict()) == {"weight", "bias"}
    assert isinstance(folded[0].bias, nn.Parameter)
    assert folded[0].bias.dtype == dtype
    assert set(folded.state_dict()) == {"0.weight", "0.bias"}


@pytest.mark.parametrize("dtype", DTYPES)
def test_bn_without_affine(dtype):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 5, 1), nn.BatchNorm2d(5, affine=False)))
    check_fold(model, torch.randn(2, 3, 4, 4), dtype, expect_folds=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_and_depthwise_conv(dtype):
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(8, 12, 3, groups=4, padding=1),
        nn.BatchNorm2d(12),
        # depthwise, with dilation and a non-zero padding mode: the fold only touches weights
        nn.Conv2d(12, 12, 3, groups=12, dilation=2, padding=2, padding_mode="reflect",
                  bias=False),
        nn.BatchNorm2d(12),
        nn.Conv2d(12, 6, 1, padding_mode="circular", stride=2),
        nn.BatchNorm2d(6),
    ))
    check_fold(model, torch.randn(2, 8, 9, 9), dtype, expect_folds=3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose(dtype):
    model = randomize_bn(nn.Sequential(
        nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1),
        nn.BatchNorm2d(6),
    ))
    check_fold(model, torch.randn(2, 4, 5, 5), dtype, expect_folds=1)
    model1d = randomize_bn(nn.Sequential(nn.ConvTranspose1d(6, 9, 2, groups=3, bias=False),
                                         nn.BatchNorm1d(9)))
    check_fold(model1d, torch.randn(2, 6, 7), dtype, expect_folds=1)
    model3d = randomize_bn(nn.Sequential(nn.ConvTranspose3d(2, 3, 2), nn.BatchNorm3d(3)))
    check_fold(model3d, torch.randn(1, 2, 3, 3, 3), dtype, expect_folds=1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nested_sequentials(dtype):
    model = randomize_bn(nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU()),
        nn.Sequential(
            nn.Sequential(nn.Conv2d(4, 6, 3), nn.BatchNorm2d(6)),
            nn.ReLU(),
            nn.Sequential(collections.OrderedDict(
                conv=nn.Conv2d(6, 6, 1, bias=False), bn=nn.BatchNorm2d(6))),
        ),
        nn.Flatten(),
        nn.Linear(6 * 6 * 6, 5),
        nn.BatchNorm1d(5),
    ))
    folded = check_fold(model, torch.randn(2, 3, 8, 8), dtype, expect_folds=4)
    assert isinstance(folded[1][2].bn, nn.Identity)


def test_running_stats_from_training_steps():
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6, momentum=0.5), nn.ReLU(),
                          nn.Conv2d(6, 4, 3), nn.BatchNorm2d(4, momentum=0.5))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        loss = model(3.0 * torch.randn(4, 3, 8, 8) + 1.0).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.allclose(model[1].running_var, torch.ones(6))
    check_fold(model, torch.randn(2, 3, 8, 8), expect_folds=2)


class BasicBlock(nn.Module):
    """ResNet basic block: conv-bn-relu-conv-bn + shortcut (conv-bn when the shape changes)."""

    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                      nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class UntraceableBlock(BasicBlock):
    def forward(self, x):
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        if out.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this
            out = out * 2
        return out


def tiny_resnet(block=BasicBlock):
    return randomize_bn(nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        block(8, 8), block(8, 16, stride=2),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    ))


RESNET_PAIRS = [("3.conv1", "3.bn1"), ("3.conv2", "3.bn2"),
                ("4.conv1", "4.bn1"), ("4.conv2", "4.bn2")]


@pytest.mark.parametrize("dtype", DTYPES)
def test_resnet_block_named_pairs(dtype):
    model = tiny_resnet()
    # trace=False: only Sequential adjacency (stem and shortcut) plus the named pairs.
    folded = check_fold(model, torch.randn(2, 3, 12, 12), dtype, expect_folds=6,
                        pairs=RESNET_PAIRS, trace=False)
    assert bn_count(folded) == 0
    partial = fold_batch_norm(model, trace=False)
    assert bn_count(partial) == 4  # without the names the blocks' own pairs are not visible


def test_resnet_block_found_by_fx():
    folded = check_fold(tiny_resnet(), torch.randn(2, 3, 12, 12), expect_folds=6)
    assert bn_count(folded) == 0


def test_untraceable_model_with_named_pairs():
    model = tiny_resnet(UntraceableBlock)
    auto = check_fold(model, torch.randn(2, 3, 12, 12), expect_folds=2)  # stem + shortcut
    assert isinstance(auto[3].bn1, nn.BatchNorm2d)
    check_fold(model, torch.randn(2, 3, 12, 12), expect_folds=6, pairs=RESNET_PAIRS)


class PlainSubclassBN(nn.BatchNorm2d):
    pass


class OverriddenButPlainBN(nn.BatchNorm2d):
    def forward(self, x):
        return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                        self.bias, False, 0.0, self.eps)


class MimicFusedBN(nn.BatchNorm2d):
    """The interface of fused_norm's BatchNorm (relu=True, forward(input, residual)) in plain
    torch, so these paths are covered even where the compiled kernels are not available."""

    def __init__(self, *args, relu=False, **kwargs):
        super().__init__(*args, **kwargs)
        self.relu = relu

    def forward(self, x, residual=None):
        y = super().forward(x)
        if residual is not None:
            y = y + residual
        return torch.relu(y) if self.relu else y


class GELUBN(nn.BatchNorm2d):
    def forward(self, x):
        return nn.functional.gelu(super().forward(x))


def test_batch_norm_subclasses():
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 4, 3), PlainSubclassBN(4),
        nn.Conv2d(4, 4, 3), OverriddenButPlainBN(4),
        nn.Conv2d(4, 4, 1), MimicFusedBN(4, relu=True),
        nn.Conv2d(4, 4, 1), MimicFusedBN(4),
        nn.Conv2d(4, 4, 1), GELUBN(4),  # neither BN nor BN + ReLU: must stay
    ))
    folded = check_fold(model, torch.randn(2, 3, 9, 9), expect_folds=4)
    assert isinstance(folded[1], nn.Identity)
    assert isinstance(folded[3], nn.Identity)
    assert type(folded[5]) is nn.ReLU
    assert isinstance(folded[7], nn.Identity)
    assert isinstance(folded[9], GELUBN)


class FusedTailBlock(nn.Module):
    """ResNet block in fused_norm style: bn1 with relu=True, bn2(conv2(out), residual)."""

    def __init__(self, bn_cls, c=6):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = bn_cls(c, relu=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = bn_cls(c, relu=True)

    def forward(self, x):
        return self.bn2(self.conv2(self.bn1(self.conv1(x))), x)


def check_fused_tail_block(bn_cls):
    model = randomize_bn(FusedTailBlock(bn_cls))
    folded = check_fold(model, torch.randn(2, 6, 7, 7), expect_folds=1)
    assert type(folded.bn1) is nn.ReLU
    assert isinstance(folded.bn2, bn_cls)  # called with a residual: not a pair
    # Naming the residual pair is refused while the traced graph shows the second input.
    with pytest.raises(ValueError, match="does not feed only"):
        fold_batch_norm(model.eval(), pairs=[("conv2", "bn2")])


def test_fused_tail_block_mimic():
    check_fused_tail_block(MimicFusedBN)


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("name", ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"])
def test_fused_norm_batch_norm(name, relu):
    cls = getattr(fused_norm, name)
    conv, shape = {"BatchNorm1d": (nn.Conv1d, (2, 3, 11)), "BatchNorm2d": (nn.Conv2d, (2, 3, 9, 9)),
                   "BatchNorm3d": (nn.Conv3d, (2, 3, 5, 5, 5))}[name]
    bn = cls(6, relu=True) if relu else cls(6)
    model = randomize_bn(nn.Sequential(conv(3, 6, 3), bn, nn.Tanh()))
    folded = check_fold(model, torch.randn(shape), expect_folds=1)
    assert type(folded[1]) is (nn.ReLU if relu else nn.Identity)


def test_fused_norm_tail_block():
    check_fused_tail_block(fused_norm.BatchNorm2d)


# ------------------------------------------------------------------------------------------
# What is left alone, and what raises


def test_model_in_training_mode_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match=r"model\.eval\(\)"):
        fold_batch_norm(model)


def test_bn_in_training_mode_or_without_running_stats_not_folded():
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4, track_running_stats=False),
        nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4),
    )).eval()
    model[1].train()
    x = torch.randn(4, 3, 10, 10)
    folded = fold_batch_norm(model)
    assert isinstance(folded[1], nn.BatchNorm2d) and folded[1].training
    assert isinstance(folded[3], nn.BatchNorm2d)
    assert isinstance(folded[5], nn.Identity)
    with torch.no_grad():
        # Both unfoldable BNs normalize with batch statistics, so the outputs still agree.
        torch.testing.assert_close(folded(x), model(x), **TOL[torch.float32])


@pytest.mark.parametrize("trace", [True, False])
def test_original_untouched_unless_inplace(trace):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4))).eval()
    state = copy.deepcopy(model.state_dict())
    folded = fold_batch_norm(model, trace=trace)
    assert folded is not model
    assert isinstance(model[1], nn.BatchNorm2d) and model[0].bias is None
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k

    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    same = fold_batch_norm(model, inplace=True, trace=trace)
    assert same is model and isinstance(model[1], nn.Identity)
    torch.testing.assert_close(model(x), ref, **TOL[torch.float32])


def test_nothing_to_fold():
    model = randomize_bn(nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4),   # BN after an activation
        nn.BatchNorm2d(4),                                  # BN after BN
        nn.Flatten(), nn.Linear(4 * 8 * 8, 3),
    ))
    folded = check_fold(model, torch.randn(2, 3, 10, 10), expect_folds=0)
    assert [type(m) for m in folded] == [type(m) for m in model]
    assert fold_batch_norm(nn.Identity().eval()).__class__ is nn.Identity


def test_channel_mismatch_raises():
    model = nn.Sequential(collections.OrderedDict(
        stem=nn.Conv2d(3, 8, 3), stem_bn=nn.BatchNorm2d(16))).eval()
    with pytest.raises(ValueError, match=r"'stem'.*'stem_bn'"):
        fold_batch_norm(model)
    model2 = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 4))
    model2.add_module("bn", nn.BatchNorm1d(5))
    with pytest.raises(ValueError, match=r"'2'.*'bn'"):
        fold_batch_norm(model2.eval(), pairs=[("2", "bn")])


def test_linear_on_3d_input_not_folded():
    # Linear over the last dim of (N, C, L), BatchNorm1d over C: a valid model, not foldable.
    model = randomize_bn(nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(3)))
    check_fold(model, torch.randn(2, 3, 5), expect_folds=0)


def test_named_pair_errors_leave_model_unchanged():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(),
                                       nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4))).eval()
    for pairs, match in [
        ([("nope", "1")], "no submodule"),
        ([("2", "1")], "ReLU"),
        ([("0", "2")], "ReLU"),
        ([("0", "1"), ("0", "4")], "conflicts"),
    ]:
        with pytest.raises(ValueError, match=match):
            fold_batch_norm(model, inplace=True, pairs=pairs, trace=False)
        assert isinstance(model[1], nn.BatchNorm2d) and isinstance(model[4], nn.BatchNorm2d)
    # a named pair the traced graph contradicts (conv 3 feeds bn 4, not bn 1)
    with pytest.raises(ValueError, match="trace=False"):
        fold_batch_norm(model, pairs=[("3", "1")])


class TwoUses(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.seq = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))

    def forward(self, x):
        y = self.conv(x)
        z = self.seq[0](x)  # the Sequential is not run as a chain: its conv output is reused
        return self.bn(y) + y, self.seq[1](z) * z


def test_fx_rejects_reused_outputs():
    model = randomize_bn(TwoUses()).eval()
    x = torch.randn(2, 3, 6, 6)
    ref = model(x)
    folded = fold_batch_norm(model)
    assert bn_count(folded) == 2
    for a, b in zip(folded(x), ref):
        torch.testing.assert_close(a, b)


class Reuse(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3))
        self.conv = nn.Conv2d(3, 3, 1)
        self.bn_a = nn.BatchNorm2d(3)
        self.bn_b = nn.BatchNorm2d(3)
        self.pair = nn.Sequential(nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3))

    def forward(self, x):
        x = self.block(self.block(x))            # same conv -> same bn twice: foldable
        y = self.bn_a(self.conv(x)) + self.bn_b(self.conv(x))  # one conv, two BNs: not
        w = self.pair[0].weight                  # weights read directly: not
        return self.pair(y) + nn.functional.conv2d(x, w)


def test_fx_repeated_calls_and_direct_reads():
    model = randomize_bn(Reuse())
    folded = check_fold(model, torch.randn(2, 3, 6, 6), expect_folds=1)
    assert isinstance(folded.block[1], nn.Identity)


def test_shared_hooked_or_overridden_layers_not_folded():
    shared = nn.Conv2d(3, 3, 1)

    class WSConv(nn.Conv2d):  # weight standardization undoes any scaling of the weight
        def _conv_forward(self, x, w, b):
            w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / w.std(dim=(1, 2, 3), keepdim=True)
            return super()._conv_forward(x, w, b)

    model = randomize_bn(nn.Sequential(
        nn.Sequential(shared, nn.BatchNorm2d(3)),
        nn.Sequential(shared, nn.BatchNorm2d(3)),   # same conv registered twice
        nn.Conv2d(3, 3, 1), nn.BatchNorm2d(3),      # hooked below
        WSConv(3, 3, 1), nn.BatchNorm2d(3),
    ))
    model[2].register_forward_hook(lambda m, i, o: None)
    check_fold(model, torch.randn(2, 3, 5, 5), expect_folds=0)
    # the untraceable path (Sequential adjacency only) applies the same checks
    check_fold(model, torch.randn(2, 3, 5, 5), expect_folds=0, trace=False)


def test_exclude():
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4),
                                       nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4)))
    folded = check_fold(model, torch.randn(2, 3, 7, 7), expect_folds=1, exclude=["3"])
    assert isinstance(folded[3], nn.BatchNorm2d)


def test_tracing_side_effects_not_kept():
    class Caching(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
            self.last = None

        def forward(self, x):
            self.last = self.body(x)
            return self.last

    model = randomize_bn(Caching()).eval()
    folded = fold_batch_norm(model, inplace=True)
    assert folded.last is None
    assert bn_count(folded) == 0


def test_device(device):
    model = randomize_bn(nn.Sequential(nn.Conv2d(3, 4, 3, groups=1), nn.BatchNorm2d(4),
                                       nn.Linear(6, 5))).to(device).eval()
    x = torch.randn(2, 3, 8, 8, device=device)
    ref = model(x)
    folded = fold_batch_norm(model)
    assert folded[0].weight.device == x.device
    torch.testing.assert_close(folded(x), ref, atol=1e-5, rtol=1e-5)
