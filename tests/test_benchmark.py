"""evaluation.benchmark, the helpers scripts/bench_*.py share: formatting, interleaved-round
order, per-round ratios, timing and FLOP counting (with the CPU SDPA kernels)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from evaluation.benchmark import (count_flops, fmt_g, fmt_mem, fmt_t, median_range, per_round_ratios, ratio_str,
                                  rotated, timed_call)

REPO_ROOT = Path(__file__).resolve().parents[1]


def test_formatting_of_medians_ranges_and_sizes():
    assert fmt_t([]) == "-" and fmt_t([0.5]) == "0.500"
    assert fmt_t([0.3, 0.1, 0.2]) == "0.200 (0.100-0.300)"
    assert median_range([1.0, 3.0, 2.0], "{:.2f}") == "2.00 (1.00-3.00)"
    assert ratio_str([0.5, 0.25, 0.75], pct=True) == "50.0% (25.0%-75.0%)"
    assert fmt_g(12.34e9) == "12.3" and fmt_g(1.5e9) == "1.500"
    assert fmt_mem(None) == "-" and fmt_mem(1234.4) == "1,234"


def test_rounds_rotate_so_no_variant_always_runs_first():
    names = ["a", "b", "c"]
    assert [rotated(names, r) for r in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                     ["a", "b", "c"]]
    assert rotated(("sa", "ca"), 1) == ["ca", "sa"]
    assert per_round_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]


def test_timed_call_runs_inner_times_and_reads_no_memory_without_a_method():
    calls = []
    seconds, peak = timed_call(lambda: calls.append(1), torch.device("cpu"), inner=3)
    assert len(calls) == 3 and seconds >= 0 and peak is None


def test_cpu_sdpa_is_counted():
    """FlopCounterMode alone counts the CPU flash-attention kernel as 0; the mapping adds it."""
    class Attend(torch.nn.Module):
        def forward(self, q, k, v, scale):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v) * scale
    q = torch.randn(1, 2, 16, 8)
    counts = count_flops(lambda: Attend()(q, q, q, 1.0))
    assert counts["total"] >= 2 * (2 * 16 * 16 * 8)   # QK^T and PV, 2 FLOPs per multiply-add


def test_every_benchmark_script_imports_the_shared_module_and_answers_help():
    for script in sorted((REPO_ROOT / "scripts").glob("bench_*.py")):
        text = script.read_text()
        assert "from evaluation.benchmark import" in text and "from bench_" not in text, script.name
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and "usage:" in out.stdout, (script.name, out.stderr[-500:])
