"""SyncBatchNorm over gloo on CPU with 2 and 4 processes: output, input/weight/bias gradients
and running statistics equal BatchNorm's on the concatenated global batch, for even, uneven and
empty local batches, plain and with the fused ReLU / residual add."""

from __future__ import annotations

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import fused_norm

C = 5


def _global_batch(seed, sizes, spatial, layout):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), C, *spatial, generator=g) * 2 + 1
    residual = torch.randn(x.shape, generator=g)
    grad = torch.randn(x.shape, generator=g)
    if layout == "channels_last":
        x, residual, grad = (t.contiguous(memory_format=torch.channels_last)
                             for t in (x, residual, grad))
    return x, residual, grad


def _make_bn(cls, relu):
    bn = cls(C, momentum=0.2, relu=relu) if cls is not torch.nn.BatchNorm2d else cls(C, momentum=0.2)
    with torch.no_grad():
        bn.weight.copy_(torch.linspace(0.5, 1.5, C))
        bn.bias.copy_(torch.linspace(-0.5, 0.5, C))
    return bn


def _worker(rank, world, init_file, sizes, spatial, layout, fused, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        torch.manual_seed(0)
        relu = fused != "none"
        x, residual, grad = _global_batch(1234, sizes, spatial, layout)
        begin = sum(sizes[:rank])
        local = slice(begin, begin + sizes[rank])

        # Two training steps then one eval step: running statistics evolve across steps.
        sync = fused_norm.SyncBatchNorm.convert_sync_batchnorm(
            torch.nn.Sequential(_make_bn(fused_norm.BatchNorm2d, relu)))[0]
        assert isinstance(sync, fused_norm.SyncBatchNorm) and sync.relu == relu
        reference = _make_bn(fused_norm.BatchNorm2d, relu)
        for step in range(2):
            scale = 1 + step
            xl = (x[local] * scale).detach().requires_grad_()
            xg = (x * scale).detach().requires_grad_()
            res = residual if fused == "add_relu" else None
            rl = res[local].detach().requires_grad_() if res is not None else None
            rg = res.detach().requires_grad_() if res is not None else None
            y_local = sync(xl, rl)
            y_global = reference(xg, rg)
            torch.testing.assert_close(y_local, y_global[local], atol=1e-5, rtol=1e-5)
            # Each process's loss is its share of the global loss.
            y_local.backward(grad[local])
            y_global.backward(grad)
            torch.testing.assert_close(xl.grad, xg.grad[local], atol=1e-5, rtol=1e-5)
            if rl is not None:
                torch.testing.assert_close(rl.grad, rg.grad[local], atol=1e-5, rtol=1e-5)
            for name in ("weight", "bias"):
                total = getattr(sync, name).grad.clone()
                dist.all_reduce(total)
                torch.testing.assert_close(total, getattr(reference, name).grad, atol=1e-4,
                                           rtol=1e-5)
                getattr(sync, name).grad = None
                getattr(reference, name).grad = None
            torch.testing.assert_close(sync.running_mean, reference.running_mean)
            torch.testing.assert_close(sync.running_var, reference.running_var)
            assert int(sync.num_batches_tracked) == int(reference.num_batches_tracked)
        sync.eval()
        reference.eval()
        torch.testing.assert_close(sync(x[local]), reference(x)[local])

        # As torch's, eval mode does not synchronize: without running statistics each process
        # normalizes with its own batch's.
        unsynced = fused_norm.SyncBatchNorm(C, track_running_stats=False).eval()
        local_only = fused_norm.BatchNorm2d(C, track_running_stats=False).eval()
        torch.testing.assert_close(unsynced(x[local]), local_only(x[local]))

        # Input torch's own SyncBatchNorm cannot synchronize either gets a clear error, and
        # leaves the step count as it was.
        sync.train()
        tracked = int(sync.num_batches_tracked)
        with pytest.raises(NotImplementedError, match="dense strided tensors only"):
            sync(x[local].to_sparse())
        assert int(sync.num_batches_tracked) == tracked
        with open(f"{result_file}.{rank}", "w") as f:
            f.write("ok")
    finally:
        dist.destroy_process_group()


CASES = [
    pytest.param(2, [3, 3], (4, 4), "contiguous", "none", id="2-even"),
    pytest.param(2, [1, 4], (3, 5), "channels_last", "relu", id="2-uneven-channels-last-relu"),
    pytest.param(4, [2, 0, 3, 1], (3, 3), "contiguous", "add_relu", id="4-uneven-empty-add-relu"),
    pytest.param(4, [2, 2, 2, 2], (2, 3), "channels_last", "none", id="4-even-channels-last"),
]


@pytest.mark.parametrize("world,sizes,spatial,layout,fused", CASES)
def test_sync_batch_norm_equals_global_batch_norm(world, sizes, spatial, layout, fused):
    with tempfile.TemporaryDirectory() as tmp:
        init_file = os.path.join(tmp, "init")
        result_file = os.path.join(tmp, "result")
        mp.start_processes(_worker, args=(world, init_file, sizes, spatial, layout, fused,
                                          result_file),
                           nprocs=world, join=True, start_method="spawn")
        for rank in range(world):
            with open(f"{result_file}.{rank}") as f:
                assert f.read() == "ok"


def test_without_process_group_behaves_as_batch_norm():
    sync = fused_norm.SyncBatchNorm(C)
    plain = torch.nn.BatchNorm1d(C)
    x = torch.randn(6, C, 4)
    torch.testing.assert_close(sync(x), plain(x))
    torch.testing.assert_close(sync.running_var, plain.running_var)


def test_convert_keeps_parameters_and_state_dict():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, C, 3), torch.nn.BatchNorm2d(C),
                                torch.nn.Sequential(fused_norm.BatchNorm2d(C, relu=True)))
    model(torch.randn(2, 3, 6, 6))
    converted = fused_norm.SyncBatchNorm.convert_sync_batchnorm(model)
    assert isinstance(converted[1], fused_norm.SyncBatchNorm)
    assert isinstance(converted[1], torch.nn.SyncBatchNorm)
    assert isinstance(converted[2][0], fused_norm.SyncBatchNorm) and converted[2][0].relu
    assert list(converted.state_dict()) == list(model.state_dict())
    for a, b in zip(converted.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="expected at least 2D input"):
        converted[1](torch.randn(5))
