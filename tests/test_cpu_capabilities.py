"""The CPU kernels are built once per instruction set (portable, AVX2, AVX-512) and one is picked
at run time; FUSED_NORM_CPU_CAPABILITY narrows the choice so that each variant (row norms and
BatchNorm) is checked here, in a fresh process, against the reference math."""

import os
import subprocess
import sys
import textwrap

import pytest

CHECK = textwrap.dedent(
    """
    import torch
    import fused_norm
    from fused_norm import reference

    torch.manual_seed(0)
    worst = 0.0
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float64, 1e-9)):
        for M, N in ((3, 1), (5, 17), (4, 64), (2, 1000), (3, 4099)):
            x = (torch.randn(M, N, dtype=torch.float64) * 3 + 2).to(dtype).requires_grad_()
            w = torch.randn(N, dtype=dtype, requires_grad=True)
            b = torch.randn(N, dtype=dtype, requires_grad=True)
            dy = torch.randn(M, N, dtype=dtype)
            for ours, ref, args in (
                (fused_norm.layer_norm, reference.layer_norm_ref, (w, b)),
                (fused_norm.rms_norm, reference.rms_norm_ref, (w,)),
            ):
                leaves = [x, *args]
                got = ours(x, (N,), *args)
                got_grads = torch.autograd.grad(got, leaves, dy)
                x64 = [t.detach().double().requires_grad_() for t in leaves]
                want = ref(x64[0], (N,), *x64[1:])
                want_grads = torch.autograd.grad(want, x64, dy.double())
                for g, e in zip((got, *got_grads), (want, *want_grads)):
                    err = ((g.double() - e).abs().max() / (e.abs().max() + 1)).item()
                    assert err < tol * (M ** 0.5), (ours.__name__, dtype, M, N, err)
                    worst = max(worst, err)
    # BatchNorm (+ add + ReLU), training: both ways of walking the [A, C, B] view (planes; rows,
    # for channels_last and small planes), partial vectors, C == 1.
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 5e-2), (torch.float64, 1e-9)):
        for shape, channels_last in (((4, 3, 17, 19), False), ((4, 5, 7, 7), False),
                                     ((6, 5, 3, 3), True), ((33, 70), False),
                                     ((5, 1, 40, 40), False)):
            x = (torch.randn(shape, dtype=torch.float64) * 3 + 2).to(dtype)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            C = shape[1]
            w = torch.randn(C, dtype=dtype, requires_grad=True)
            b = torch.randn(C, dtype=dtype, requires_grad=True)
            r = torch.randn(shape, dtype=dtype, requires_grad=True)
            x.requires_grad_()
            dy = torch.randn(shape, dtype=dtype)
            leaves = [x, r, w, b]
            got = fused_norm.batch_norm_add_relu(x, r, None, None, w, b, training=True)
            got_grads = torch.autograd.grad(got, leaves, dy)
            x64 = [t.detach().double().requires_grad_() for t in leaves]
            want = reference.batch_norm_ref(x64[0], None, None, x64[2], x64[3], residual=x64[1],
                                            relu=True)
            want_grads = torch.autograd.grad(want, x64, dy.double())
            for g, e in zip((got, *got_grads), (want, *want_grads)):
                err = ((g.double() - e).abs().max() / (e.abs().max() + 1)).item()
                assert err < tol * (x.numel() / C) ** 0.5, ("batch_norm", dtype, shape, err)
                worst = max(worst, err)
    print("ok", worst)
    """
)


@pytest.mark.parametrize("capability", ["default", "avx2", "avx512"])
def test_cpu_capability_variant_matches_reference(capability):
    env = dict(os.environ, FUSED_NORM_CPU_CAPABILITY=capability)
    result = subprocess.run(
        [sys.executable, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.startswith("ok"), result.stdout
