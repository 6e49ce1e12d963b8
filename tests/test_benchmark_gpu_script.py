"""Smoke test of ``benchmarks/gpu.py`` (the GPU benchmark) on the CPU: ``--device cpu --tiny``, in this process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def gpu(monkeypatch: pytest.MonkeyPatch):
    """The ``benchmarks/gpu.py`` module (its folder on ``sys.path``, as when it runs as a script)."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import gpu

    return gpu


def _positive(value: float) -> bool:
    return math.isfinite(value) and value > 0


@pytest.mark.usefixtures("one_thread")
@pytest.mark.slow
def test_tiny_cpu_run_writes_plausible_results(gpu, tmp_path: Path) -> None:
    results, out = gpu.run(["--device", "cpu", "--tiny", "--amp", "bf16", "--out", str(tmp_path)])
    assert out == tmp_path
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["command"] == f"python benchmarks/gpu.py --device cpu --tiny --amp bf16 --out {tmp_path}"
    assert saved["tiny"] is True
    env = saved["environment"]
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu" and env["device"]
    assert "cuda" in env  # None on a CPU build of torch, but recorded

    forward = saved["forward"]
    assert [(r["precision"], r["N"]) for r in forward] == [
        (precision, n) for precision in ("float32", "autocast bf16") for n in gpu.TINY_SIZES
    ]
    for r in forward:
        assert "error" not in r, r
        assert r["model"] == "SE3Transformer" and not r["compiled"]
        assert _positive(r["forward_backward_s"]) and _positive(r["fastest_s"])
        assert r["fastest_s"] <= r["forward_backward_s"]
        assert r["peak_GB"] is None  # CUDA memory only
        assert r["parameters"] > 0
    for precision in ("float32", "autocast bf16"):
        series = [r for r in forward if r["precision"] == precision]
        edges = [r["E"] for r in series]
        assert edges == sorted(edges) and edges[0] > 0  # more nodes, not fewer edges
        # kNN with K = 16: N (N - 1) edges while N <= K, N K beyond
        assert all(r["E"] == r["N"] * min(gpu.bench.K, r["N"] - 1) for r in series)

    train = saved["train"]
    assert [r["precision"] for r in train] == ["float32", "autocast bf16"]
    setting = gpu.TINY_QM9
    for r in train:
        assert "error" not in r, r
        assert r["N"] == setting.batch_size * setting.nodes_per_graph
        assert r["E"] == setting.batch_size * setting.nodes_per_graph * (setting.nodes_per_graph - 1)  # complete
        assert _positive(r["graphs_per_s"]) and _positive(r["step_s"]) and math.isfinite(r["loss"])
        assert r["graphs_per_s"] == pytest.approx(setting.batch_size / r["step_s"])
    assert [p["graphs_per_s"] for p in saved["nvidia_published"]] == [2210.0, 2920.0]

    report = (tmp_path / "gpu.md").read_text()
    assert "## Forward+backward" in report and "## Training throughput" in report
    assert "NVIDIA's published figure" in report and "not measured here" in report
    assert results["forward"] == forward


def test_qm9_setting_is_nvidias(gpu) -> None:
    s = gpu.QM9
    assert (s.batch_size, s.nodes_per_graph, s.num_layers, s.max_degree, s.channels) == (240, 18, 7, 3, 32)
    assert (s.num_heads, s.channels_div, s.pooled) == (8, 2, 128)


def test_qm9_batch_is_complete(gpu) -> None:
    setting = gpu.QM9Setting(batch_size=3, nodes_per_graph=5)
    data = gpu.qm9_batch(setting, torch.device("cpu"))
    src, dst = data["edge_index"]
    assert data["edge_index"].shape[1] == 3 * 5 * 4
    assert bool((data["batch"][src] == data["batch"][dst]).all()) and bool((src != dst).all())
    assert data["x"].shape == (15, setting.node_features) and data["edge_attr"].shape == (60, setting.edge_features)
    assert data["y"].shape == (3,)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--device", "cpu"], "only --tiny"),
        (["--device", "cpu", "--tiny", "--repeats", "0"], "--repeats: expected >= 1"),
    ],
)
def test_refusals(gpu, capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_refuses_cuda_without_cuda(gpu, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        gpu.parse_args([])
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--device cpu --tiny" in err
