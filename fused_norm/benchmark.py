"""The main job: fused_norm against torch eager, torch.compile and Liger-Kernel, fwd and bwd.

    python -m fused_norm.benchmark                 # every op on the present device
    python -m fused_norm.benchmark --ops rms_norm --dtypes bfloat16 --json out.json

Measures, per op, dtype, shape and layout: the median time of each implementation, its bandwidth
(each tensor counted once: forward reads x and writes y; backward reads x and dy and writes dx),
that bandwidth as a fraction of a device copy of the same bytes measured in the same run, and
our speed-up over each peer. A progress bar runs on stderr; at the end come a table per op and
the geometric-mean speed-ups; --json writes the rows with the device, versions and command line,
--plot (by default next to --json) a PNG of bandwidth against shape. Liger-Kernel takes part
where it is importable and the device is CUDA. Speed is measured here, never asserted in tests.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import fused_norm

class RowNorm:
    """LayerNorm / RMSNorm over the last dim of an (M, N) tensor, or ("nhwc_view") of the NHWC
    view of an (M / 16, N, 4, 4) tensor, as ConvNeXt normalizes the channels of a channels-first
    activation (both libraries copy the view first). Bytes: forward reads x and writes y;
    backward reads x and dy and writes dx."""

    # (rows, hidden): hidden sizes of common models at 2^27 elements (256 MB per bf16 tensor,
    # far beyond the L2 cache), plus very long rows.
    cuda_shapes = [(131072, 1024), (65536, 2048), (32768, 4096), (16384, 8192), (8192, 16384),
                   (2048, 65536)]
    cpu_shapes = [(4096, 256), (2048, 1024), (512, 4096), (128, 16384), (16, 131072)]
    layouts = ["contiguous", "nhwc_view"]
    fwd_tensors, bwd_tensors = 2, 3

    def __init__(self, ours, theirs, has_bias, liger=None):
        self.ours, self.theirs, self.has_bias, self.liger = ours, theirs, has_bias, liger

    def make(self, shape, layout, device, dtype):
        """(inputs that require grad, ours, torch's): the callables take the inputs."""
        M, N = shape
        if layout == "nhwc_view":
            side = next(s for s in (4, 2, 1) if M % (s * s) == 0)  # 4 but for tiny test shapes
            x = torch.randn(M // side**2, N, side, side, device=device, dtype=dtype,
                            requires_grad=True)

            def rows():
                return x.permute(0, 2, 3, 1)
        else:
            x = torch.randn(M, N, device=device, dtype=dtype, requires_grad=True)

            def rows():
                return x
        w = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        b = torch.randn(N, device=device, dtype=dtype, requires_grad=True) if self.has_bias else None
        inputs = [t for t in (x, w, b) if t is not None]
        return inputs, (lambda *a: self.ours(rows(), w, b)), (lambda *a: self.theirs(rows(), w, b))

    def liger_peer(self, lk, inputs, layout):
        """(inputs, callable) of Liger-Kernel's version, or None where it has none."""
        if self.liger is None or layout != "contiguous":
            return None
        return inputs, lambda *_: self.liger(lk, *inputs)


class AddNorm:
    """The pre-norm residual add fused with LayerNorm / RMSNorm over the last dim of (M, N)
    tensors: h = x + residual, y = norm(h), h kept for the next block; torch's peer is the unfused
    composition. Bytes: forward reads x and the residual and writes y and h; backward reads h and
    dy and writes the gradients of x and the residual."""

    # The fused CUDA kernels hold a row in registers: hidden sizes up to 8192.
    cuda_shapes = RowNorm.cuda_shapes[:4]
    cpu_shapes = RowNorm.cpu_shapes
    layouts = ["contiguous"]
    fwd_tensors, bwd_tensors = 4, 4

    def __init__(self, rms):
        self.rms = rms

    def make(self, shape, layout, device, dtype):
        M, N = shape
        x = torch.randn(M, N, device=device, dtype=dtype, requires_grad=True)
        residual = torch.randn(M, N, device=device, dtype=dtype, requires_grad=True)
        w = torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        b = None if self.rms else torch.randn(N, device=device, dtype=dtype, requires_grad=True)
        inputs = [t for t in (x, residual, w, b) if t is not None]

        def ours(*_):
            if self.rms:
                return fused_norm.add_rms_norm(x, residual, (N,), w, prenorm=True)[0]
            return fused_norm.add_layer_norm(x, residual, (N,), w, b, prenorm=True)[0]

        def theirs(*_):
            h = x + residual
            return F.rms_norm(h, (N,), w) if self.rms else F.layer_norm(h, (N,), w, b)

        return inputs, ours, theirs


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

    def liger_peer(self, lk, inputs, layout):
        # Liger's kernel views the input as (N, groups, rest): NCHW only.
        if self.kind != "group_norm" or layout != "contiguous":
            return None
        x, w, b = inputs
        return inputs, lambda *_: lk.liger_group_norm(x, w, b, x.shape[1], 32, 1e-5)


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

    def __init__(self, ours, gate, liger=None):
        self.ours, self.gate, self.liger = ours, gate, liger

    def make(self, shape, layout, device, dtype):
        x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)

        def theirs(*_):
            a, b = x.chunk(2, -1)
            return self.gate(a) * b

        return [x], (lambda *_: self.ours(x)), theirs

    def liger_peer(self, lk, inputs, layout):
        """Liger's kernels take the gate and the up projection as two tensors (as the two
        Linear layers of an MLP give them): contiguous copies of the halves, same bytes."""
        if self.liger is None:
            return None
        a, b = (half.detach().contiguous().requires_grad_() for half in inputs[0].chunk(2, -1))
        return [a, b], lambda *_: self.liger(lk, a, b)


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
                          lambda x, w, b: F.layer_norm(x, x.shape[-1:], w, b), has_bias=True,
                          liger=lambda lk, x, w, b: lk.liger_layer_norm(x, w, b, 1e-5)),
    # Liger's backward writes dx over dy unless in_place=False: dy is shared by every
    # implementation and timed repeatedly.
    "rms_norm": RowNorm(lambda x, w, b: fused_norm.rms_norm(x, x.shape[-1:], w),
                        lambda x, w, b: F.rms_norm(x, x.shape[-1:], w), has_bias=False,
                        liger=lambda lk, x, w: lk.liger_rms_norm(
                            x, w, torch.finfo(torch.float32).eps, in_place=False)),
    "add_layer_norm": AddNorm(rms=False),
    "add_rms_norm": AddNorm(rms=True),
    "batch_norm": BatchNorm(None),
    "batch_norm_relu": BatchNorm("relu"),
    "batch_norm_add_relu": BatchNorm("add_relu"),
    "group_norm": GroupNorm("group_norm"),
    "group_norm_silu": GroupNorm("group_norm_silu"),
    "instance_norm": GroupNorm("instance_norm"),
    "softmax": Softmax(log=False),
    "log_softmax": Softmax(log=True),
    "dyt": DyT(),
    "swiglu": Gated(fused_norm.swiglu, F.silu, liger=lambda lk, a, b: lk.liger_swiglu(a, b)),
    # No Liger peer: its GeGLU is the tanh approximation, ours and torch's the exact erf.
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


def load_liger(device):
    """Liger-Kernel's functional module where it can run (Triton kernels: CUDA only), else
    None: the sweep then has no Liger column."""
    if device.type != "cuda":
        return None
    try:
        import liger_kernel.transformers.functional as lk
    except ImportError:
        return None
    return lk


def cases(device, op_names, dtypes, shapes):
    """Every (op name, op, dtype, shape, layout) of the sweep, in the order it runs."""
    for op_name in op_names:
        op = OPS[op_name]
        op_shapes = shapes or (op.cuda_shapes if device.type == "cuda" else op.cpu_shapes)
        for dtype in dtypes:
            for shape in op_shapes:
                for layout in op.layouts:
                    yield op_name, op, dtype, shape, layout


def clock(seconds):
    minutes, seconds = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class Progress:
    """Cases done out of the total, the current case, elapsed time and ETA on stderr: one bar
    redrawn in place on a terminal, one line per case otherwise (a log file stays readable)."""

    def __init__(self, total, stream=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.total, self.done, self.case = total, 0, ""
        self.begin = time.monotonic()

    def status(self):
        elapsed = time.monotonic() - self.begin
        eta = clock(elapsed / self.done * (self.total - self.done)) if self.done else "?"
        return f"{self.done}/{self.total} {self.case} | {clock(elapsed)} elapsed, ETA {eta}"

    def start(self, case):
        self.case = case
        if self.tty:
            self.draw()
        else:
            print(f"[{self.status()}]", file=self.stream, flush=True)

    def finish(self):
        self.done += 1
        if self.tty:
            self.draw()

    def draw(self):
        width = shutil.get_terminal_size().columns - 1
        filled = 20 * self.done // max(self.total, 1)
        line = f"[{'#' * filled}{'.' * (20 - filled)}] {self.status()}"
        self.stream.write("\r\x1b[K" + line[:width])
        self.stream.flush()

    def line(self, text):
        """A line on stdout that does not land in the middle of the bar."""
        if self.tty:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
        print(text, flush=True)
        if self.tty:
            self.draw()

    def close(self):
        if self.tty:
            self.stream.write("\r\x1b[K")
        elapsed = clock(time.monotonic() - self.begin)
        print(f"{self.done}/{self.total} cases in {elapsed}", file=self.stream, flush=True)


def run(device, op_names, dtypes, shapes, reps, compile_peer, liger=None, verbose=False):
    """The rows of the sweep. liger: Liger-Kernel's functional module (load_liger) or None."""
    measure = timer(device)
    rows = []
    if compile_peer:
        # Recompiled per shape (static shapes, as a user would get); the limit is raised so that
        # the sweep never falls back to eager.
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    todo = list(cases(device, op_names, dtypes, shapes))
    progress = Progress(len(todo))
    for op_name, op, dtype, shape, layout in todo:
        dtype_name = str(dtype).replace("torch.", "")
        progress.start(f"{op_name} {dtype_name} {shape_text(shape)} {layout}")
        inputs, ours, theirs = op.make(shape, layout, device, dtype)
        impls = {"fused_norm": (inputs, ours), "torch": (inputs, theirs)}
        if compile_peer:
            impls["torch.compile"] = (inputs, torch.compile(theirs, dynamic=False))
        liger_peer = getattr(op, "liger_peer", None)
        if liger is not None and liger_peer is not None:
            peer = liger_peer(liger, inputs, layout)
            if peer is not None:
                impls["Liger-Kernel"] = peer
        x = inputs[0]
        with torch.no_grad():
            dy = torch.randn_like(ours())  # the output's shape (not x's for GLUs)
        tensor_bytes = x.numel() * x.element_size()
        copy_dst = torch.empty_like(x)
        (copy_time,) = measure([lambda: copy_dst.copy_(x.detach())], reps)
        copy_bw = 2 * tensor_bytes / copy_time
        # One (forward, backward) pair per implementation: each builds its graph once.
        pairs = [forward_and_backward(fn, fn_inputs, dy) for fn_inputs, fn in impls.values()]
        for direction, tensors in (("fwd", op.fwd_tensors), ("bwd", op.bwd_tensors)):
            moved = tensors * tensor_bytes
            fns = [pair[direction == "bwd"] for pair in pairs]
            times = dict(zip(impls, measure(fns, reps)))
            row = {
                "op": op_name, "dtype": dtype_name, "shape": shape_text(shape), "layout": layout,
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
            if verbose:
                progress.line(row_line(row, impls))
        del inputs, dy, copy_dst, pairs, impls
        progress.finish()
    progress.close()
    return rows


def row_line(row, impls):
    peers = [name for name in impls if name != "fused_norm"]
    layout = {"contiguous": "", "channels_last": " cl"}.get(row["layout"], " " + row["layout"])
    cells = [f"{row['op']:<10} {row['dtype']:<8} {row['shape'] + layout:>18} {row['direction']}"]
    for name in impls:
        cells.append(
            f"{name} {row[f'{name}_us']:9.1f}us {row[f'{name}_GBps']:7.1f}GB/s "
            f"({100 * row[f'{name}_copy_frac']:3.0f}%)"
        )
    cells += [f"x{row[f'speedup_vs_{p}']:.2f} vs {p}" for p in peers]
    return " | ".join(cells)


def implementations(rows):
    """The implementations that have a time in any of the rows, fused_norm first."""
    names = {}
    for row in rows:
        names.update((key[:-3], None) for key in row if key.endswith("_us"))
    return list(names)


def geomean(values):
    return math.exp(sum(map(math.log, values)) / len(values))


def format_table(groups):
    """groups: [(title, [(heading, cells, align), ...]), ...], align "<" or ">"; a group's title
    spans its columns on a first header line, groups are separated by a bar."""
    blocks = []
    for title, columns in groups:
        widths = [max(len(heading), *map(len, cells)) for heading, cells, _ in columns]
        # A title wider than its columns widens the last one.
        widths[-1] += max(0, len(title) - sum(widths) - 2 * (len(widths) - 1))
        lines = ["  ".join(f"{heading:{align}{w}}" for (heading, _, align), w
                           in zip(columns, widths))]
        for i in range(len(columns[0][1])):
            lines.append("  ".join(f"{cells[i]:{align}{w}}" for (_, cells, align), w
                                   in zip(columns, widths)))
        width = len(lines[0])
        blocks.append([f"{title:^{width}}"] + lines)
    return "\n".join(" | ".join(line).rstrip() for line in zip(*blocks))


def bandwidth(gbps):
    """Three significant digits without an exponent: TB/s on a GPU, a few GB/s on tiny CPU
    cases."""
    return f"{gbps:.0f}" if gbps >= 100 else f"{gbps:.1f}" if gbps >= 10 else f"{gbps:.2f}"


def table(rows):
    """Per op: every case's time, GB/s and fraction of a device copy per implementation, and
    fused_norm's speed-up over each peer ("-" where a peer did not run that case)."""
    out = []
    for op_name in dict.fromkeys(row["op"] for row in rows):
        op_rows = [row for row in rows if row["op"] == op_name]
        impls = implementations(op_rows)

        def cells(fmt, key):
            return [fmt(row[key]) if key in row else "-" for row in op_rows]

        groups = [(op_name, [(heading, [str(row[key]) for row in op_rows], "<") for heading, key
                             in (("dtype", "dtype"), ("shape", "shape"), ("layout", "layout"),
                                 ("dir", "direction"))]
                   + [("copy GB/s", cells(bandwidth, "copy_GBps"), ">")])]
        for name in impls:
            groups.append((name, [("us", cells("{:.1f}".format, f"{name}_us"), ">"),
                                  ("GB/s", cells(bandwidth, f"{name}_GBps"), ">"),
                                  ("copy", cells("{:.0%}".format, f"{name}_copy_frac"), ">")]))
        groups.append(("fused_norm speed-up", [
            (f"vs {name}", cells("x{:.2f}".format, f"speedup_vs_{name}"), ">")
            for name in impls[1:]]))
        out.append(format_table(groups))
    return "\n\n".join(out)


def summary(rows):
    """Geometric-mean speed-up of fused_norm per op and over all ops, per peer and over all."""
    peers = [name for name in implementations(rows) if name != "fused_norm"]

    def line(label, subset):
        cells = []
        for peer in peers + ([None] if len(peers) > 1 else []):
            keys = [f"speedup_vs_{peer}"] if peer else [f"speedup_vs_{p}" for p in peers]
            values = [row[k] for row in subset for k in keys if k in row]
            cells.append(f"x{geomean(values):.2f}" if values else "-")
        return [label] + cells

    ops = list(dict.fromkeys(row["op"] for row in rows))
    lines = [line(op, [row for row in rows if row["op"] == op]) for op in ops]
    lines.append(line("all ops", rows))
    header = (["geometric-mean speed-up"] + [f"vs {p}" for p in peers]
              + (["vs all peers"] if len(peers) > 1 else []))
    widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(f"{cell:{'<' if i == 0 else '>'}{w}}" for i, (cell, w)
                  in enumerate(zip(cells, widths)))
        for cells in [header] + lines)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    """The commit of the checkout fused_norm was imported from (with "-dirty" when it has
    uncommitted changes), or None for an installed copy."""
    package_dir = Path(fused_norm.__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", "-C", str(package_dir), *args], capture_output=True,
                              text=True, check=True, timeout=10).stdout.strip()

    try:
        # An installed copy can sit inside some unrelated repository (a virtualenv in a project).
        if Path(git("rev-parse", "--show-toplevel")).resolve() != package_dir.parent:
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no")
        return git("rev-parse", "HEAD") + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def metadata(device, argv, liger):
    is_cuda = device.type == "cuda"
    meta = {
        "fused_norm": fused_norm.__version__, "torch": torch.__version__,
        "cuda": torch.version.cuda, "device": torch.cuda.get_device_name(device) if is_cuda
        else "cpu", "cpu": cpu_model(), "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "argv": list(argv), "git_commit": git_commit(),
    }
    if liger is not None:
        try:
            meta["liger_kernel"] = importlib.metadata.version("liger-kernel")
        except importlib.metadata.PackageNotFoundError:
            meta["liger_kernel"] = "unknown"
    return meta


PLOT_STYLE = {"fused_norm": "C0", "torch": "C1", "torch.compile": "C2", "Liger-Kernel": "C3"}


def plot(rows, meta, path):
    """Bandwidth against shape, one panel per op and direction, one line per implementation
    (and per dtype and layout, when the sweep has several), the device copy as a dashed line.
    path: a .png file for all panels, or a directory for one <op>.png per op. Returns the files
    written, or None without matplotlib."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ops = list(dict.fromkeys(row["op"] for row in rows))
    path = Path(path)
    if path.suffix.lower() == ".png":
        path.parent.mkdir(parents=True, exist_ok=True)
        figures = [(path, ops)]
    else:
        path.mkdir(parents=True, exist_ok=True)
        figures = [(path / f"{op}.png", [op]) for op in ops]
    where = (meta["device"] if meta["device"] != "cpu"
             else f"CPU {meta['cpu']}, {meta['threads']} threads")
    title = f"fused_norm {meta['fused_norm']}, torch {meta['torch']}, {where}"
    for file, fig_ops in figures:
        panels = [(op, d) for op in fig_ops for d in ("fwd", "bwd")
                  if any(r["op"] == op and r["direction"] == d for r in rows)]
        ncols = 2 if len(panels) > 1 else 1
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.5 * ncols, 4 * nrows), squeeze=False)
        for ax, (op, direction) in zip(axes.flat, panels):
            plot_panel(ax, [r for r in rows if r["op"] == op and r["direction"] == direction])
            ax.set_title(f"{op} {direction}")
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        fig.suptitle(title)
        fig.tight_layout()
        fig.savefig(file, dpi=100)
        plt.close(fig)
    return [file for file, _ in figures]


def plot_panel(ax, rows):
    shapes = list(dict.fromkeys(row["shape"] for row in rows))
    variants = list(dict.fromkeys((row["dtype"], row["layout"]) for row in rows))
    styles = ["-", "--", ":", "-."]
    for name in implementations(rows):
        for (dtype, layout), style in zip(variants, styles * len(variants)):
            points = [(shapes.index(r["shape"]), r[f"{name}_GBps"]) for r in rows
                      if r["dtype"] == dtype and r["layout"] == layout and f"{name}_GBps" in r]
            if not points:
                continue
            label = name if len(variants) == 1 else f"{name} ({dtype}, {layout})"
            ax.plot(*zip(*points), style, marker="o", color=PLOT_STYLE.get(name), label=label)
    copy = statistics.median(row["copy_GBps"] for row in rows)
    ax.axhline(copy, color="grey", linestyle="--", linewidth=1,
               label=f"device copy ({bandwidth(copy)} GB/s)")
    ax.set_xticks(range(len(shapes)), shapes, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("GB/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--ops", nargs="+", default=list(OPS), choices=list(OPS), metavar="OP",
                        help="default: all of " + " ".join(OPS))
    parser.add_argument("--dtypes", nargs="+", default=None,
                        help="default: bfloat16 on CUDA; float32 and bfloat16 on CPU")
    parser.add_argument("--shapes", nargs="+", default=None, metavar="MxN",
                        help="sizes joined by x (MxN for row norms, NxCxHxW for batch norms, "
                             "the element count for activations); "
                             "default: each op's own list")
    parser.add_argument("--reps", type=int, default=None)
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    parser.add_argument("--no-liger", action="store_true",
                        help="skip the Liger-Kernel peer (used when importable, on CUDA)")
    parser.add_argument("--verbose", action="store_true",
                        help="also print each row as it is measured")
    parser.add_argument("--json", help="also write the metadata and rows here")
    parser.add_argument("--plot", help="PNG plot of GB/s against shape: a .png file for all "
                                       "ops, or a directory for one file per op; default: "
                                       "next to --json (its name with .png)")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    is_cuda = device.type == "cuda"
    dtypes = [getattr(torch, d) for d in (args.dtypes or
              (["bfloat16"] if is_cuda else ["float32", "bfloat16"]))]
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes or []]
    reps = args.reps or (50 if is_cuda else 10)
    liger = None if args.no_liger else load_liger(device)
    meta = metadata(device, argv, liger)
    print(f"fused_norm {meta['fused_norm']} | torch {meta['torch']} (CUDA {meta['cuda']}) | "
          f"{meta['device'] if is_cuda else meta['cpu']} | threads {meta['threads']}"
          + (f" | Liger-Kernel {meta['liger_kernel']}" if liger else ""), flush=True)
    rows = run(device, args.ops, dtypes, shapes, reps, compile_peer=not args.no_compile,
               liger=liger, verbose=args.verbose)
    if rows:
        print()
        print(table(rows))
        print()
        print(summary(rows))
        speedups = [r[k] for r in rows for k in r if k.startswith("speedup_vs_")]
        print(f"geometric-mean speed-up over all peers and shapes: x{geomean(speedups):.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        with open(args.json, "w") as f:
            json.dump({"meta": meta, "results": rows}, f, indent=1)
        print(f"wrote {args.json}")
    plot_path = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot_path and rows:
        files = plot(rows, meta, plot_path)
        if files:
            print("wrote " + ", ".join(map(str, files)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
