"""The main job: fused_norm against torch eager and torch.compile, forward and backward.

    python -m fused_norm.benchmark                 # every op on the present device
    python -m fused_norm.benchmark --ops rms_norm --dtypes bfloat16 --json out.json

Prints, per op, dtype and shape: the median time of each implementation, its bandwidth (each
tensor counted once: forward reads x and writes y; backward reads x and dy and writes dx), that
bandwidth as a fraction of a device copy of the same bytes measured in the same run, and our
speed-up over each peer. Speed is measured here, never asserted in tests.
"""

import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fused_norm

class RowNorm:
    """LayerNorm / RMSNorm over the last dim of an (M, N) tensor. Bytes: forward reads x and
    writes y; backward reads x and dy and writes dx."""

    # (rows, hidden): hidden sizes of common models at 2^27 elements (256 MB per bf16 tensor,
    # far beyond the L2 cache), plus very long rows.
    cuda_shapes = [(131072, 1024), (65536, 2048), (32768, 4096), (16384, 8192), (8192, 16384),
                   (2048, 65536)]
    cpu_shapes = [(4096, 256), (2048, 1024), (512, 4096), (128, 16384), (16, 131072)]
    layouts = ["contiguous"]
    fwd_tensors, bwd_tensors = 2, 3

    def __init__(self, ours, theirs, has_bias):
        self.ours, self.theirs, self.has_bias = ours, theirs, has_bias

    def make(self, shape, layout, device, dtype):
        """(inputs that require grad, ours, torch's): the callables take the inputs."""
        M, N = shape
        x = torch.randn(M, N, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(N, device=device, dtype=dtype, requires_grad=True) if self.has_bias else None
        inputs = [t for t in (x, w, b) if t is not None]
        return inputs, (lambda *a: self.ours(x, w, b)), (lambda *a: self.theirs(x, w, b))


class BatchNorm:
    """Training BatchNorm2d (optionally + ReLU, or + residual + ReLU) of an (N, C, H, W) tensor,
    NCHW or channels_last. Bytes as the issue counts them: forward reads x (and the residual)
    and writes y; backward reads x and dy and writes dx (and the residual's gradient)."""

    cuda_shapes = [(32, 256, 56, 56), (64, 64, 112, 112), (256, 1024, 14, 14)]
    cpu_shapes = [(16, 64, 56, 56), (32, 256, 14, 14), (8, 32, 112, 112)]
    layouts = ["contiguous", "channels_last"]

    def __init__(self, fused):
        self.fused = fused  # None, "relu" or "add_relu"
        extra = 1 if fused == "add_relu" else 0
        self.fwd_tensors, self.bwd_tensors = 2 + extra, 3 + extra

    def make(self, shape, layout, device, dtype):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        x.requires_grad_()
        C = shape[1]
        w = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
        inputs = [x, w, b]
        residual = None
        if self.fused == "add_relu":
            residual = torch.randn_like(x).requires_grad_()
            inputs.append(residual)
        stats = [torch.zeros(C, device=device, dtype=dtype), torch.ones(C, device=device, dtype=dtype)]

        # Fresh running statistics per call (a copy of C values): a graph kept for the backward
        # timing may have saved the buffers that later forward calls would update in place.
        def ours(*_):
            running = [t.clone() for t in stats]
            if self.fused == "relu":
                return fused_norm.batch_norm_relu(x, *running, w, b, True)
            if self.fused == "add_relu":
                return fused_norm.batch_norm_add_relu(x, residual, *running, w, b, True)
            return fused_norm.batch_norm(x, *running, w, b, True)

        def theirs(*_):
            y = F.batch_norm(x, *[t.clone() for t in stats], w, b, True)
            if residual is not None:
                y = y + residual
            return F.relu(y) if self.fused else y

        return inputs, ours, theirs


class GroupNorm:
    """Training GroupNorm (32 groups; optionally + SiLU) or InstanceNorm of an (N, C, H, W)
    tensor, NCHW or channels_last (a diffusion UNet's usual format). Bytes: forward reads x and
    writes y; backward reads x and dy and writes dx."""

    cuda_shapes = [(8, 512, 64, 64), (16, 256, 128, 128), (32, 1280, 16, 16)]
    cpu_shapes = [(4, 256, 32, 32), (8, 128, 32, 32), (8, 640, 8, 8)]
    layouts = ["contiguous", "channels_last"]
    fwd_tensors, bwd_tensors = 2, 3

    def __init__(self, kind):
        self.kind = kind  # "group_norm", "group_norm_silu" or "instance_norm"

    def make(self, shape, layout, device, dtype):
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=fmt)
        x.requires_grad_()
        C = shape[1]
        w = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(C, device=device, dtype=dtype, requires_grad=True)
        if self.kind == "instance_norm":
            return ([x, w, b], lambda *_: fused_norm.instance_norm(x, weight=w, bias=b),
                    lambda *_: F.instance_norm(x, weight=w, bias=b))
        if self.kind == "group_norm_silu":
            return ([x, w, b], lambda *_: fused_norm.group_norm_act(x, 32, w, b, 1e-5, "silu"),
                    lambda *_: F.silu(F.group_norm(x, 32, w, b)))
        return ([x, w, b], lambda *_: fused_norm.group_norm(x, 32, w, b),
                lambda *_: F.group_norm(x, 32, w, b))


class Softmax:
    """Softmax / LogSoftmax of an (M, N) tensor over its last dim (a row problem) or its first
    (dim0: a strided one, no transpose). Bytes: forward reads x and writes y; backward reads y
    and dy and writes dx."""

    cuda_shapes = [(32768, 4096), (4096, 32768), (1024, 131072)]
    cpu_shapes = [(8192, 128), (1024, 1024), (128, 8192), (16, 131072)]
    layouts = ["contiguous", "dim0"]
    fwd_tensors, bwd_tensors = 2, 3

    def __init__(self, log):
        self.ours = fused_norm.log_softmax if log else fused_norm.softmax
        self.theirs = F.log_softmax if log else F.softmax

    def make(self, shape, layout, device, dtype):
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
        dim = 0 if layout == "dim0" else -1
        return [x], (lambda *_: self.ours(x, dim)), (lambda *_: self.theirs(x, dim))


class Gated:
    """SwiGLU / GeGLU of an (M, 2H) tensor: act(a) * b with a, b = x.chunk(2, -1), against the
    composite in torch. Bytes, in units of x: forward reads x and writes y (half of x); backward
    reads x and dy (half) and writes dx."""

    # x of 2^28 elements: the output is 2^27, the activations' size.
    cuda_shapes = [(16384, 16384), (65536, 4096)]
    cpu_shapes = [(1024, 2048), (128, 16384)]
    layouts = ["contiguous"]
    fwd_tensors, bwd_tensors = 1.5, 2.5

    def __init__(self, ours, gate):
        self.ours, self.gate = ours, gate

    def make(self, shape, layout, device, dtype):
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)

        def theirs(*_):
            a, b = x.chunk(2, -1)
            return self.gate(a) * b

        return [x], (lambda *_: self.ours(x)), theirs


class Activation:
    """An elementwise activation of a flat tensor (2^27 elements on CUDA: 256 MB per bf16 tensor;
    2^22 on CPU), or PReLU with a slope per channel of an (N, C, L) tensor of as many elements.
    Bytes: forward reads x and writes y; backward reads x (or y) and dy and writes dx."""

    cuda_shapes = [(1 << 27,)]
    cpu_shapes = [(1 << 22,)]
    layouts = ["contiguous"]
    fwd_tensors, bwd_tensors = 2, 3

    def __init__(self, ours, theirs, per_channel=False):
        self.ours, self.theirs, self.per_channel = ours, theirs, per_channel

    def make(self, shape, layout, device, dtype):
        numel = math.prod(shape)
        if not self.per_channel:
            x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
            return [x], lambda *_: self.ours(x), lambda *_: self.theirs(x)
        C = 64
        x = torch.randn(64, C, numel // (64 * C), device=device, dtype=dtype, requires_grad=True)
        w = torch.rand(C, device=device, dtype=dtype, requires_grad=True)
        return [x, w], lambda *_: self.ours(x, w), lambda *_: self.theirs(x, w)


class DyT:
    """DyT (weight * tanh(alpha * x) + bias) over the last dim of an (M, N) tensor, against the
    composition in torch. Shapes and bytes as the row norms' (their drop-in)."""

    cuda_shapes = RowNorm.cuda_shapes
    cpu_shapes = RowNorm.cpu_shapes
    layouts = ["contiguous"]
    fwd_tensors, bwd_tensors = 2, 3

    def make(self, shape, layout, device, dtype):
        M, N = shape
        x = torch.randn(M, N, device=device, dtype=dtype, requires_grad=True)
        alpha = torch.full((1,), 0.5, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        return ([x, alpha, w, b], lambda *_: fused_norm.dyt(x, alpha, w, b),
                lambda *_: w * torch.tanh(alpha * x) + b)


def _activation(name, **kw):
    return Activation(lambda x: getattr(fused_norm, name)(x, **kw),
                      lambda x: getattr(F, name)(x, **kw))


ACTIVATION_OPS = {
    "relu": _activation("relu"),
    "relu6": _activation("relu6"),
    "leaky_relu": _activation("leaky_relu"),
    "prelu": Activation(fused_norm.prelu, F.prelu, per_channel=True),
    "rrelu": _activation("rrelu", training=True),
    "elu": _activation("elu"),
    "selu": _activation("selu"),
    "celu": _activation("celu"),
    "gelu": _activation("gelu"),
    "gelu_tanh": _activation("gelu", approximate="tanh"),
    "silu": _activation("silu"),
    "hardswish": _activation("hardswish"),
    "hardsigmoid": _activation("hardsigmoid"),
    "hardtanh": _activation("hardtanh"),
    "mish": _activation("mish"),
    "sigmoid": Activation(fused_norm.sigmoid, torch.sigmoid),
    "tanh": Activation(fused_norm.tanh, torch.tanh),
    "softplus": _activation("softplus"),
}

OPS = {
    "layer_norm": RowNorm(lambda x, w, b: fused_norm.layer_norm(x, x.shape[-1:], w, b),
                          lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), has_bias=True),
    "rms_norm": RowNorm(lambda x, w, b: fused_norm.rms_norm(x, x.shape[-1:], w),
                        lambda x, w, b: F.rms_norm(x, x.shape[-1:], w), has_bias=False),
    "batch_norm": BatchNorm(None),
    "batch_norm_relu": BatchNorm("relu"),
    "batch_norm_add_relu": BatchNorm("add_relu"),
    "group_norm": GroupNorm("group_norm"),
    "group_norm_silu": GroupNorm("group_norm_silu"),
    "instance_norm": GroupNorm("instance_norm"),
    "softmax": Softmax(log=False),
    "log_softmax": Softmax(log=True),
    "dyt": DyT(),
    "swiglu": Gated(fused_norm.swiglu, F.silu),
    "geglu": Gated(fused_norm.geglu, F.gelu),
    **ACTIVATION_OPS,
}


def timer(device):
    """A function that takes callables and returns the median seconds of each over `reps` runs.

    The runs come in rounds: each round runs every callable several times back to back (its
    steady state: the CPU allocator reuses its last buffers, caches hold its own data), and the
    rounds alternate between the callables, so that a slow spell of the machine hits every
    implementation alike. On CUDA, device events around each run; the shapes are large enough
    (256 MB per tensor) that the GPU, not the Python and autograd overhead of launching, sets
    the time."""
    rounds = 5

    def measure(fns, reps):
        per_round = max(3, reps // rounds)
        times = [[] for _ in fns]
        for _ in range(rounds):
            for fn, fn_times in zip(fns, times):
                fn()  # warm-up: the first run after another implementation pays its misses
                fn_times += time_runs(fn, per_round)
        return [statistics.median(fn_times) for fn_times in times]

    def time_runs(fn, count):
        if device.type == "cuda":
            events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                      for _ in range(count)]
            for start, end in events:
                start.record()
                fn()
                end.record()
            torch.cuda.synchronize()
            return [start.elapsed_time(end) / 1e3 for start, end in events]
        seconds = []
        for _ in range(count):
            begin = time.perf_counter()
            fn()
            seconds.append(time.perf_counter() - begin)
        return seconds

    return measure


def forward_and_backward(fn, inputs, dy):
    """Callables that time the forward alone and the backward alone (graph kept between runs)."""
    y = fn()

    def forward():
        with torch.no_grad():
            fn()

    def backward():
        torch.autograd.grad(y, inputs, dy, retain_graph=True)

    return forward, backward


def shape_text(shape):
    return "x".join(str(size) for size in shape)


def run(device, op_names, dtypes, shapes, reps, compile_peer):
    measure = timer(device)
    rows = []
    if compile_peer:
        # Recompiled per shape (static shapes, as a user would get); the limit is raised so that
        # the sweep never falls back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    for op_name in op_names:
        op = OPS[op_name]
        op_shapes = shapes or (op.cuda_shapes if device.type == "cuda" else op.cpu_shapes)
        for dtype in dtypes:
            for shape in op_shapes:
                for layout in op.layouts:
                    inputs, ours, theirs = op.make(shape, layout, device, dtype)
                    impls = {"fused_norm": ours, "torch": theirs}
                    if compile_peer:
                        impls["torch.compile"] = torch.compile(theirs, dynamic=False)
                    x = inputs[0]
                    with torch.no_grad():
                        dy = torch.randn_like(ours())  # the output's shape (not x's for GLUs)
                    tensor_bytes = x.numel() * x.element_size()
                    copy_dst = torch.empty_like(x)
                    (copy_time,) = measure([lambda: copy_dst.copy_(x.detach())], reps)
                    copy_bw = 2 * tensor_bytes / copy_time
                    # One (forward, backward) pair per implementation: each builds its graph once.
                    pairs = [forward_and_backward(fn, inputs, dy) for fn in impls.values()]
                    for direction, tensors in (("fwd", op.fwd_tensors), ("bwd", op.bwd_tensors)):
                        moved = tensors * tensor_bytes
                        fns = [pair[direction == "bwd"] for pair in pairs]
                        times = dict(zip(impls, measure(fns, reps)))
                        row = {
                            "op": op_name, "dtype": str(dtype).replace("torch.", ""),
                            "shape": shape_text(shape), "layout": layout,
                            "direction": direction, "copy_GBps": copy_bw / 1e9,
                        }
                        for name, seconds in times.items():
                            row[f"{name}_us"] = seconds * 1e6
                            row[f"{name}_GBps"] = moved / seconds / 1e9
                            row[f"{name}_copy_frac"] = moved / seconds / copy_bw
                        for name in impls:
                            if name != "fused_norm":
                                row[f"speedup_vs_{name}"] = times[name] / times["fused_norm"]
                        rows.append(row)
                        print_row(row, impls)
                    del inputs, dy, copy_dst, pairs, impls
    return rows


def print_row(row, impls):
    peers = [name for name in impls if name != "fused_norm"]
    layout = {"contiguous": "", "channels_last": " cl"}.get(row["layout"], " " + row["layout"])
    cells = [f"{row['op']:<10} {row['dtype']:<8} {row['shape'] + layout:>18} {row['direction']}"]
    for name in impls:
        cells.append(
            f"{name} {row[f'{name}_us']:9.1f}us {row[f'{name}_GBps']:7.1f}GB/s "
            f"({100 * row[f'{name}_copy_frac']:3.0f}%)"
        )
    cells += [f"x{row[f'speedup_vs_{p}']:.2f} vs {p}" for p in peers]
    print(" | ".join(cells), flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS))
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="default: bfloat16 on CUDA; float32 and bfloat16 on CPU")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="MxN",
                        help="sizes joined by x (MxN for row norms, NxCxHxW for batch norms, "
                             "the element count for activations); "
                             "default: each op's own list")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    is_cuda = device.type == "cuda"
    dtypes = [getattr(torch, d) for d in (args.dtypes or
              (["bfloat16"] if is_cuda else ["float32", "bfloat16"]))]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes or []]
    reps = args.reps or (50 if is_cuda else 10)
    print(f"fused_norm {fused_norm.__version__} | torch {torch.__version__} | "
          f"{torch.cuda.get_device_name(device) if is_cuda else 'CPU'} | "
          f"threads {torch.get_num_threads()}", flush=True)
    rows = run(device, args.ops, dtypes, shapes, reps, compile_peer=not args.no_compile)
    if rows:
        speedups = [r[k] for r in rows for k in r if k.startswith("speedup_vs_")]
        geomean = math.exp(sum(map(math.log, speedups)) / len(speedups))
        print(f"geometric-mean speed-up over all peers and shapes: x{geomean:.2f}")
    if args.json:
        meta = {"device": torch.cuda.get_device_name(device) if is_cuda else "cpu",
                "torch": torch.__version__, "fused_norm": fused_norm.__version__,
                "threads": torch.get_num_threads()}
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
