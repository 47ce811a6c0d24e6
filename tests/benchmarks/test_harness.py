"""Timing statistics, percentile math, interleaved timing, memory monitor, device peak."""

from __future__ import annotations

import time

import numpy as np
import pytest

from semask_deploy.benchmarks.harness import (
    MemoryMonitor, TimingStats, machine_info, measure_device_peak, percentile, read_proc_status, time_fn,
    time_interleaved,
)


@pytest.mark.parametrize("n", [1, 2, 5, 20, 101])
def test_percentile_matches_numpy_linear(n):
    rng = np.random.default_rng(n)
    values = rng.exponential(10.0, size=n).tolist()
    for q in (0, 1, 25, 50, 90, 99, 99.9, 100):
        assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-12)


def test_percentile_by_hand():
    v = [40.0, 10.0, 30.0, 20.0]  # sorted 10, 20, 30, 40; pos = 3q/100
    assert percentile(v, 50) == 25.0
    assert percentile(v, 90) == pytest.approx(37.0)  # pos 2.7 → 30 + 0.7·10
    assert percentile(v, 0) == 10.0 and percentile(v, 100) == 40.0
    with pytest.raises(ValueError):
        percentile([], 50)
    with pytest.raises(ValueError):
        percentile(v, 101)


def test_timing_stats_fields():
    t = TimingStats([10.0, 20.0, 30.0, 40.0, 100.0], batch=4, warmup=2)
    assert t.p50 == 30.0 and t.mean == 40.0 and t.min == 10.0 and t.max == 100.0
    assert t.p90 == pytest.approx(76.0) and t.p99 == pytest.approx(97.6)
    assert t.std == pytest.approx(float(np.std([10, 20, 30, 40, 100])))
    assert t.images_per_s == pytest.approx(4 / 0.040)
    d = t.to_dict()
    assert d["runs"] == 5 and d["times_ms"] == [10.0, 20.0, 30.0, 40.0, 100.0] and d["batch"] == 4
    with pytest.raises(ValueError):
        TimingStats([])


def test_time_fn_counts_calls():
    calls = []
    stats = time_fn(lambda: calls.append(1), runs=20, warmup=3, batch=2)
    assert len(calls) == 23 and stats.runs == 20 and stats.warmup == 3 and stats.timer == "perf_counter"
    assert all(t >= 0 for t in stats.times_ms) and stats.p50 <= stats.p90 <= stats.p99 <= stats.max
    with pytest.raises(ValueError):
        time_fn(lambda: None, runs=0)


def test_time_interleaved_rotates_and_drops_failures():
    order, errors = [], []

    def make(name):
        return lambda: order.append(name)

    def bad():
        order.append("bad")
        if order.count("bad") == 3:
            raise RuntimeError("boom")

    stats = time_interleaved({"a": make("a"), "b": make("b"), "bad": bad}, runs=5, warmup=1,
                             on_error=lambda n, e: errors.append((n, str(e))))
    assert set(stats) == {"a", "b"} and stats["a"].runs == 5 and stats["b"].runs == 5
    assert errors == [("bad", "boom")]
    assert order[:3] == ["a", "b", "bad"] and order[3:6] == ["b", "bad", "a"]  # rotating start


def test_time_interleaved_raises_without_handler():
    def boom():
        raise RuntimeError("x")

    with pytest.raises(RuntimeError):
        time_interleaved({"x": boom}, runs=1)


def test_memory_monitor_sees_host_allocation():
    with MemoryMonitor("cpu") as mon:
        a = np.ones(64 * 2**20 // 8)  # 64 MiB, touched
        a += 1
        inside = read_proc_status()
        time.sleep(0.5)  # the sampling thread must get the CPU at least once, even on a loaded machine
        del a
    assert mon.host_method in ("vmhwm+sampled", "sampled")
    assert mon.host_peak_delta is not None and mon.host_peak_delta >= 48 * 2**20, (inside, read_proc_status())
    d = mon.to_dict()
    assert d["host_peak_delta_mb"] >= 48 and d["device_peak_mb"] is None


def test_read_proc_status_parses(tmp_path):
    f = tmp_path / "status"
    f.write_text("Name:\tpython\nVmHWM:\t  2048 kB\nVmRSS:\t  1024 kB\nThreads:\t4\n")
    assert read_proc_status(str(f)) == {"VmHWM": 2048 * 1024, "VmRSS": 1024 * 1024}
    assert read_proc_status(str(tmp_path / "missing")) == {}


def test_device_peak_and_machine_info():
    peak = measure_device_peak("cpu", size=256, repeats=1)
    assert peak["fp32"] > 0 and "fp16" not in peak and peak["size"] == 256
    info = machine_info("cpu")
    assert info["cpu_count"] >= 1 and "torch" in info
