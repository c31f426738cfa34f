"""The benchmark harness (python -m fused_norm.benchmark) on tiny CPU cases: JSON, end table,
progress, plot and the Liger-Kernel peer. Timings are noise here; only the harness is tested."""

import datetime
import io
import json
import re
import sys
import types
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import fused_norm
from fused_norm import benchmark

TINY = ["--device", "cpu", "--dtypes", "float32", "--shapes", "8x64", "--no-compile",
        "--reps", "3"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One run of main() shared by the tests below: (argv, stdout, stderr, JSON, json path)."""
    out = tmp_path_factory.mktemp("bench")
    argv = TINY + ["--ops", "rms_norm", "softmax", "--json", str(out / "bench.json")]
    stdout, stderr = io.StringIO(), io.StringIO()
    real = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        assert benchmark.main(argv) == 0
    finally:
        sys.stdout, sys.stderr = real
    data = json.loads((out / "bench.json").read_text())
    return argv, stdout.getvalue(), stderr.getvalue(), data, out / "bench.json"


def test_json_metadata(sweep):
    argv, _, _, data, _ = sweep
    meta = data["meta"]
    assert meta["fused_norm"] == fused_norm.__version__
    assert meta["torch"] == torch.__version__
    assert meta["cuda"] == torch.version.cuda
    assert meta["device"] == "cpu"
    assert meta["threads"] == torch.get_num_threads()
    assert meta["cpu"]
    assert meta["argv"] == argv
    age = datetime.datetime.now(datetime.timezone.utc) - datetime.datetime.fromisoformat(
        meta["date"])
    assert datetime.timedelta(0) <= age < datetime.timedelta(minutes=10)
    if (Path(fused_norm.__file__).resolve().parent.parent / ".git").exists():
        assert re.fullmatch(r"[0-9a-f]{40}(-dirty)?", meta["git_commit"])
    assert "liger_kernel" not in meta


def test_json_rows(sweep):
    rows = sweep[3]["results"]
    # rms_norm: rows and the NHWC view; softmax: the last dim and dim 0; forward and backward.
    cases = [(r["op"], r["layout"], r["direction"]) for r in rows]
    assert cases == [("rms_norm", "contiguous", "fwd"), ("rms_norm", "contiguous", "bwd"),
                     ("rms_norm", "nhwc_view", "fwd"), ("rms_norm", "nhwc_view", "bwd"),
                     ("softmax", "contiguous", "fwd"), ("softmax", "contiguous", "bwd"),
                     ("softmax", "dim0", "fwd"), ("softmax", "dim0", "bwd")]
    for row in rows:
        assert row["dtype"] == "float32" and row["shape"] == "8x64"
        assert {k for k in row if k.endswith("_us")} == {"fused_norm_us", "torch_us"}
        for name in ("fused_norm", "torch"):
            assert row[f"{name}_us"] > 0
            assert row[f"{name}_copy_frac"] == pytest.approx(
                row[f"{name}_GBps"] / row["copy_GBps"])
        assert row["speedup_vs_torch"] == pytest.approx(row["torch_us"] / row["fused_norm_us"])


def test_end_table_and_summary(sweep):
    stdout, rows = sweep[1], sweep[3]["results"]
    assert benchmark.table(rows) in stdout
    assert benchmark.summary(rows) in stdout
    for header in ("rms_norm", "softmax", "fused_norm speed-up", "vs torch", "copy GB/s"):
        assert header in stdout
    speedups = [r["speedup_vs_torch"] for r in rows]
    assert f"over all peers and shapes: x{benchmark.geomean(speedups):.2f}" in stdout
    # The per-row lines ("...us  123.4GB/s ( 12%)") come only with --verbose.
    assert not re.search(r"\dGB/s \(", stdout)


def test_progress_in_a_log(sweep):
    stderr = sweep[2]
    lines = [line for line in stderr.splitlines() if line.startswith("[")]
    assert [line.split()[0] for line in lines] == [f"[{i}/4" for i in range(4)]
    assert "softmax float32 8x64 dim0" in lines[-1] and "ETA" in lines[-1]
    assert "4/4 cases in" in stderr
    assert "\r" not in stderr


def test_progress_on_a_terminal(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setenv("COLUMNS", "120")
    stream = Terminal()
    progress = benchmark.Progress(4, stream)
    progress.start("rms_norm float32 8x64 contiguous")
    progress.finish()
    progress.start("rms_norm float32 16x64 contiguous")
    text = stream.getvalue()
    assert "\n" not in text
    last = text.split("\r\x1b[K")[-1]
    assert last.startswith("[#####...............] 1/4 rms_norm float32 16x64 contiguous")
    assert "ETA" in last
    monkeypatch.setenv("COLUMNS", "40")
    progress.finish()
    assert len(stream.getvalue().split("\r\x1b[K")[-1]) == 39  # never wraps to a new line
    progress.close()
    assert stream.getvalue().endswith("\r\x1b[K2/4 cases in 0:00\n")


def test_verbose_prints_each_row(capsys):
    assert benchmark.main(TINY + ["--ops", "rms_norm", "--verbose"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines()
             if re.search(r"\dGB/s \(", line)]
    assert [line.split()[:5] for line in lines] == [
        ["rms_norm", "float32", "8x64", "fwd", "|"], ["rms_norm", "float32", "8x64", "bwd", "|"],
        ["rms_norm", "float32", "8x64", "nhwc_view", "fwd"],
        ["rms_norm", "float32", "8x64", "nhwc_view", "bwd"]]


def test_plot(sweep):
    pytest.importorskip("matplotlib")
    png = sweep[4].with_suffix(".png")  # the default: next to --json
    assert png.read_bytes().startswith(b"\x89PNG")
    assert f"wrote {png}" in sweep[1]
    per_op = sweep[4].parent / "per_op"
    files = benchmark.plot(sweep[3]["results"], sweep[3]["meta"], per_op)
    assert sorted(p.name for p in files) == ["rms_norm.png", "softmax.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in files)


def test_plot_without_matplotlib(sweep, monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes the import fail
    assert benchmark.plot(sweep[3]["results"], sweep[3]["meta"], tmp_path / "x.png") is None
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_table_with_a_peer_missing_from_some_cases():
    def row(layout, liger):
        r = {"op": "group_norm", "dtype": "bfloat16", "shape": "8x512x64x64", "layout": layout,
             "direction": "fwd", "copy_GBps": 2950.0}
        for name, us in [("fused_norm", 100.0), ("torch", 300.0)] + liger:
            r.update({f"{name}_us": us, f"{name}_GBps": 2900.0 * 100 / us,
                      f"{name}_copy_frac": 100 / us})
            if name != "fused_norm":
                r[f"speedup_vs_{name}"] = us / 100
        return r

    rows = [row("contiguous", [("Liger-Kernel", 200.0)]), row("channels_last", [])]
    lines = benchmark.table(rows).splitlines()
    assert len(lines) == 4
    bars = {tuple(m.start() for m in re.finditer(r" \| ", line)) for line in lines}
    assert len(bars) == 1 and len(next(iter(bars))) == 4  # aligned groups
    assert "Liger-Kernel" in lines[0] and "vs Liger-Kernel" in lines[1]
    assert lines[2].split()[-2:] == ["x3.00", "x2.00"]
    assert lines[3].split()[-2:] == ["x3.00", "-"]
    summary = benchmark.summary(rows).splitlines()
    assert summary[0].split()[-1] == "peers"
    # vs torch: x3 and x3; vs Liger: x2; vs all peers: the geometric mean of 3, 3 and 2.
    assert summary[-1].split()[-3:] == ["x3.00", "x2.00", f"x{(3 * 3 * 2) ** (1 / 3):.2f}"]


def fake_liger(calls):
    """Liger-Kernel's functional API (liger_kernel.transformers.functional) in plain torch."""

    def liger_rms_norm(X, W, eps, offset=0.0, casting_mode="llama", in_place=True):
        calls.append(("rms_norm", in_place))
        return F.rms_norm(X, X.shape[-1:], W, eps)

    def liger_swiglu(a, b):
        # Liger's kernel steps through a, b and the output with one row stride.
        calls.append(("swiglu", a.is_contiguous() and b.is_contiguous()))
        return F.silu(a) * b

    def liger_group_norm(X, affine_scaling_weight, affine_shifting_bias, num_channels,
                         num_groups, eps):
        return F.group_norm(X, num_groups, affine_scaling_weight, affine_shifting_bias, eps)

    return types.SimpleNamespace(liger_rms_norm=liger_rms_norm, liger_swiglu=liger_swiglu,
                                 liger_group_norm=liger_group_norm)


def test_liger_peer(monkeypatch, tmp_path, capsys):
    calls = []
    monkeypatch.setattr(benchmark, "load_liger", lambda device: fake_liger(calls))
    out = tmp_path / "bench.json"
    assert benchmark.main(TINY + ["--ops", "rms_norm", "swiglu", "--json", str(out),
                                  "--plot", str(tmp_path / "plots")]) == 0
    data = json.loads(out.read_text())
    assert data["meta"]["liger_kernel"] == "unknown"  # the fake is no installed package
    assert [r["op"] for r in data["results"]] == ["rms_norm"] * 4 + ["swiglu"] * 2
    for row in data["results"]:
        if row["layout"] == "nhwc_view":  # Liger's norms take rows only
            assert "Liger-Kernel_us" not in row
            continue
        assert row["Liger-Kernel_us"] > 0
        assert row["speedup_vs_Liger-Kernel"] == pytest.approx(
            row["Liger-Kernel_us"] / row["fused_norm_us"])
    # Not in place: dy is shared by all implementations; contiguous gate and up halves.
    assert set(calls) == {("rms_norm", False), ("swiglu", True)}
    stdout = capsys.readouterr().out
    assert "vs Liger-Kernel" in stdout and "Liger-Kernel" in stdout.splitlines()[0]
    # --no-liger leaves it out.
    assert benchmark.main(TINY + ["--ops", "rms_norm", "--no-liger"]) == 0
    assert "Liger-Kernel" not in capsys.readouterr().out


def test_liger_group_norm_peer_is_nchw_only():
    op = benchmark.OPS["group_norm"]
    lk = fake_liger([])
    inputs, _, theirs = op.make((2, 64, 4, 4), "contiguous", torch.device("cpu"), torch.float32)
    peer_inputs, fn = op.liger_peer(lk, inputs, "contiguous")
    assert peer_inputs is inputs
    torch.testing.assert_close(fn(), theirs())
    assert op.liger_peer(lk, inputs, "channels_last") is None
    assert benchmark.OPS["group_norm_silu"].liger_peer(lk, inputs, "contiguous") is None
    assert benchmark.OPS["geglu"].liger_peer(lk, inputs, "contiguous") is None


def test_load_liger(monkeypatch):
    fake = types.ModuleType("liger_kernel.transformers.functional")
    for name in ("liger_kernel", "liger_kernel.transformers"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setattr(sys.modules["liger_kernel"], "transformers",
                        sys.modules["liger_kernel.transformers"], raising=False)
    monkeypatch.setattr(sys.modules["liger_kernel.transformers"], "functional", fake,
                        raising=False)
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", fake)
    assert benchmark.load_liger(torch.device("cuda")) is fake
    assert benchmark.load_liger(torch.device("cpu")) is None  # Triton kernels: CUDA only
    monkeypatch.setitem(sys.modules, "liger_kernel.transformers.functional", None)
    assert benchmark.load_liger(torch.device("cuda")) is None
