"""Timing and memory measurement: warm-up, timed runs, percentiles, peak memory, measured device peak.

* :func:`time_fn` — ``warmup`` untimed calls, then ``runs`` timed calls, each timed on its own
  (``time.perf_counter_ns`` on the CPU, a pair of CUDA events per call on the GPU, read after one final
  synchronisation). :class:`TimingStats` keeps every raw time and p50/p90/p99/mean/std/min/max.
* :func:`time_interleaved` — the same for several backends at once, run by run in rotating order, so
  the load of a shared machine hits all of them alike (ratios stay meaningful).
* :class:`MemoryMonitor` — peak memory of a block: on CUDA ``torch.cuda.max_memory_allocated`` (torch's
  allocator; reset at entry) and the change of the device's used memory (``cudaMemGetInfo``, which also
  sees ONNX Runtime / TensorRT allocations); on the host the peak RSS over the RSS at entry, read from
  ``/proc/self/status``: the larger of ``VmHWM`` (reset at entry through ``/proc/self/clear_refs``; the
  kernel updates it lazily) and ``VmRSS`` read by a sampling thread every 2 ms. The monitor wraps the first
  call and the warm-up of a cell, never the timed runs.
* :func:`measure_device_peak` — achieved TFLOP/s of a large fp32 matmul (and fp16 on the GPU), the
  denominator of each backend's "fraction of the measured peak".

Percentiles use linear interpolation between closest ranks (numpy's default, "type 7").
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

PROC_STATUS = "/proc/self/status"
PROC_CLEAR_REFS = "/proc/self/clear_refs"
MIN_RECOMMENDED_RUNS = 20


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0–100) with linear interpolation, like ``numpy.percentile``.

    Args:
        values: samples (any order, at least one).
        q: percentile in ``[0, 100]``.

    Returns:
        ``v[lo] + (v[hi] - v[lo]) * frac`` where ``pos = (n - 1) * q / 100`` over the sorted values.
    """
    if not values:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q}")
    v = sorted(float(x) for x in values)
    pos = (len(v) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


@dataclass
class TimingStats:
    """Latency statistics of one configuration, in milliseconds per call (one call = one batch).

    Attributes:
        times_ms: every timed run, in order.
        batch: images per call.
        warmup: untimed calls before the timed ones.
        timer: ``perf_counter`` or ``cuda_events``.
    """

    times_ms: list[float]
    batch: int = 1
    warmup: int = 0
    timer: str = "perf_counter"
    p50: float = field(init=False)
    p90: float = field(init=False)
    p99: float = field(init=False)
    mean: float = field(init=False)
    std: float = field(init=False)
    min: float = field(init=False)
    max: float = field(init=False)

    def __post_init__(self) -> None:
        t = self.times_ms
        if not t:
            raise ValueError("no timed runs")
        self.p50, self.p90, self.p99 = (percentile(t, q) for q in (50, 90, 99))
        self.mean = sum(t) / len(t)
        self.std = math.sqrt(sum((x - self.mean) ** 2 for x in t) / len(t))
        self.min, self.max = min(t), max(t)

    @property
    def runs(self) -> int:
        return len(self.times_ms)

    @property
    def images_per_s(self) -> float:
        """Throughput from the mean latency: ``batch / mean``."""
        return 1000.0 * self.batch / self.mean if self.mean > 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["runs"] = self.runs
        d["images_per_s"] = self.images_per_s
        return d


def time_fn(
    fn: Callable[[], Any],
    *,
    runs: int = 20,
    warmup: int = 3,
    batch: int = 1,
    cuda_events: bool = False,
) -> TimingStats:
    """Time ``fn()`` after warming it up.

    Args:
        fn: one inference call (its result is kept alive until the next call, then dropped).
        runs: timed calls (≥ 1; ≥ 20 recommended for a p99).
        warmup: untimed calls first (compilation, allocator and cache warm-up).
        batch: images per call, for ``images_per_s``.
        cuda_events: time on the GPU with CUDA events on the current stream (for torch work that
            returns before the GPU is done); otherwise wall-clock ``perf_counter_ns`` per call, which is
            right for synchronous backends (ONNX Runtime, TensorRT runners returning numpy, CPU torch).

    Returns:
        :class:`TimingStats`.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    for _ in range(warmup):
        fn()
    if cuda_events:
        import torch

        torch.cuda.synchronize()
        pairs = []
        for _ in range(runs):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        torch.cuda.synchronize()
        times = [float(s.elapsed_time(e)) for s, e in pairs]
        return TimingStats(times, batch=batch, warmup=warmup, timer="cuda_events")
    times = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        out = fn()
        times.append((time.perf_counter_ns() - t0) / 1e6)
        del out
    return TimingStats(times, batch=batch, warmup=warmup, timer="perf_counter")


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    *,
    runs: int = 20,
    warmup: int = 0,
    batch: int = 1,
    cuda_events: dict[str, bool] | None = None,
    on_error: Callable[[str, BaseException], None] | None = None,
) -> dict[str, TimingStats]:
    """Time several functions run by run, round-robin, so a shared machine's load hits all alike.

    Round ``r`` calls every function once, starting at a rotating position (no fixed order bias).

    Args:
        fns: name → one inference call.
        runs, warmup, batch: as in :func:`time_fn` (warm-up calls are also interleaved).
        cuda_events: name → time that function with CUDA events (default: wall clock).
        on_error: called with (name, exception) when a call raises; that function is dropped and the
            others go on. Without it the exception propagates.

    Returns:
        name → :class:`TimingStats` for every function that did not fail.
    """
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    cuda_events = cuda_events or {}
    names = list(fns)
    alive = set(names)
    raw: dict[str, list[Any]] = {n: [] for n in names}
    uses_cuda = any(cuda_events.get(n) for n in names)
    if uses_cuda:
        import torch
    for r in range(warmup + runs):
        k = r % len(names) if names else 0
        for name in names[k:] + names[:k]:
            if name not in alive:
                continue
            try:
                if cuda_events.get(name):
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fns[name]()
                    end.record()
                    if r >= warmup:
                        raw[name].append((start, end))
                else:
                    if uses_cuda:
                        torch.cuda.synchronize()  # do not time another function's queued GPU work
                    t0 = time.perf_counter_ns()
                    out = fns[name]()
                    dt = (time.perf_counter_ns() - t0) / 1e6
                    del out
                    if r >= warmup:
                        raw[name].append(dt)
            except Exception as exc:  # noqa: BLE001
                from semask_deploy.errors import raise_if_interrupted

                raise_if_interrupted(exc)  # Ctrl-C / SIGTERM that a library turned into another error
                if on_error is None:
                    raise
                alive.discard(name)
                on_error(name, exc)
    if uses_cuda:
        torch.cuda.synchronize()
    out_stats = {}
    for name in names:
        if name not in alive:
            continue
        if cuda_events.get(name):
            times = [float(s.elapsed_time(e)) for s, e in raw[name]]
            out_stats[name] = TimingStats(times, batch=batch, warmup=warmup, timer="cuda_events")
        else:
            out_stats[name] = TimingStats(raw[name], batch=batch, warmup=warmup, timer="perf_counter")
    return out_stats


# ------------------------------------------------------------------------------------------ memory


def read_proc_status(path: str = PROC_STATUS) -> dict[str, int]:
    """``VmRSS``, ``VmHWM`` (and other ``Vm*`` fields) in bytes from a ``/proc/<pid>/status`` file."""
    out = {}
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("Vm"):
                    key, _, rest = line.partition(":")
                    parts = rest.split()
                    if parts and parts[0].isdigit():
                        scale = 1024 if len(parts) > 1 and parts[1].lower() == "kb" else 1
                        out[key] = int(parts[0]) * scale
    except OSError:
        return {}
    return out


def _reset_peak_rss() -> bool:
    try:
        with open(PROC_CLEAR_REFS, "w", encoding="ascii") as f:
            f.write("5")  # reset the peak RSS (VmHWM) to the current RSS (Linux ≥ 4.0)
        return True
    except OSError:
        return False


class MemoryMonitor:
    """Context manager measuring the peak memory of a block.

    Args:
        device: ``"cpu"`` or ``"cuda"`` (``cuda:N`` accepted).
        interval_s: period of the RSS sampling thread.

    Attributes (after exit, bytes; ``None`` when not measurable here):
        host_peak_delta: peak RSS during the block minus RSS at entry.
        host_method: ``vmhwm+sampled`` or ``sampled`` (or ``unavailable``).
        device_peak: ``torch.cuda.max_memory_allocated`` during the block (absolute, torch allocator).
        device_peak_delta: the same minus what was allocated at entry.
        device_used_delta: change in the device's used memory (all allocators), from entry to exit.
    """

    def __init__(self, device: str = "cpu", interval_s: float = 0.002) -> None:
        self.cuda = str(device).startswith("cuda")
        self.interval_s = interval_s
        self.host_peak_delta: int | None = None
        self.host_method = "unavailable"
        self.device_peak: int | None = None
        self.device_peak_delta: int | None = None
        self.device_used_delta: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sampled_peak = 0

    def __enter__(self) -> "MemoryMonitor":
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._dev_base = torch.cuda.memory_allocated()
            free, total = torch.cuda.mem_get_info()
            self._dev_used = total - free
        self._rss0 = read_proc_status().get("VmRSS")
        if self._rss0 is None:
            return self
        # VmHWM (reset at entry) sees short peaks, but the kernel updates it lazily, so a sampling thread
        # backs it up; the peak is the larger of the two.
        self.host_method = "vmhwm+sampled" if _reset_peak_rss() and "VmHWM" in read_proc_status() else "sampled"
        self._sampled_peak = self._rss0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            rss = read_proc_status().get("VmRSS", 0)
            self._sampled_peak = max(self._sampled_peak, rss)

    def __exit__(self, *exc: Any) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.device_peak = int(torch.cuda.max_memory_allocated())
            self.device_peak_delta = self.device_peak - self._dev_base
            free, total = torch.cuda.mem_get_info()
            self.device_used_delta = (total - free) - self._dev_used
        if self._rss0 is None:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        status = read_proc_status()
        peak = max(self._sampled_peak, status.get("VmRSS", 0))
        if self.host_method.startswith("vmhwm"):
            peak = max(peak, status.get("VmHWM", 0))
        self.host_peak_delta = max(0, peak - self._rss0)

    def to_dict(self) -> dict[str, Any]:
        mb = lambda v: None if v is None else v / 2**20  # noqa: E731
        return {
            "host_peak_delta_mb": mb(self.host_peak_delta), "host_method": self.host_method,
            "device_peak_mb": mb(self.device_peak), "device_peak_delta_mb": mb(self.device_peak_delta),
            "device_used_delta_mb": mb(self.device_used_delta),
        }


# ------------------------------------------------------------------------------------ device peak


def measure_device_peak(device: str = "cpu", size: int | None = None, repeats: int = 3) -> dict[str, float]:
    """Achieved TFLOP/s of a large square matmul: fp32, and fp16 on the GPU (best of ``repeats``).

    Args:
        device: ``"cpu"`` or ``"cuda"``.
        size: matrix side (default 2048 on the CPU, 8192 on the GPU).
        repeats: timed products after one warm-up; the fastest counts.

    Returns:
        ``{"fp32": TFLOP/s, "fp16": TFLOP/s (GPU only), "size": n, "threads": CPU threads}``.
    """
    import torch

    cuda = str(device).startswith("cuda")
    n = size or (8192 if cuda else 2048)
    out: dict[str, float] = {"size": float(n), "threads": float(torch.get_num_threads())}
    dtypes = [("fp32", torch.float32)] + ([("fp16", torch.float16)] if cuda else [])
    for name, dtype in dtypes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        torch.mm(a, b)
        best = math.inf
        for _ in range(max(1, repeats)):
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            torch.mm(a, b)
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        out[name] = 2.0 * n**3 / best / 1e12
        del a, b
    return out


def machine_info(device: str = "cpu") -> dict[str, Any]:
    """CPU model, core count, load average, torch/threads and GPU name, for the report header."""
    import platform

    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
    }
    try:
        info["loadavg"] = list(os.getloadavg())
    except OSError:
        pass
    from semask_deploy.runtime.cpu_info import cpu_model, cpu_summary, isa_text

    info["cpu"] = cpu_model()
    info["isa"] = cpu_summary()["isa"]  # AVX2 / AVX-512 / VNNI / bf16 / AMX: machines here differ
    info["isa_text"] = isa_text()
    if str(device).startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    return info
