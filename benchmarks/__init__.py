"""Benchmarks of SeMask-FPN across backends: FLOPs, latency, memory, parity and reports.

Installed as ``semask_deploy.benchmarks`` (``pyproject.toml`` maps this folder). Modules:

* :mod:`.flops` — analytic per-layer FLOPs and the ``FlopCounterMode`` cross-check;
* :mod:`.harness` — latency (warm-up, percentiles, CUDA events), peak memory, measured device peak;
* :mod:`.parity` — backend vs torch fp32 reference (logit errors, pixel agreement, mIoU), data-set mIoU;
* :mod:`.runners` — the backends under test (torch eager/sdpa/triton/compile, ONNX Runtime, TensorRT);
* :mod:`.suite` — the backend × precision × size × batch matrix behind ``semask-bench``;
* :mod:`.report` — Markdown, JSON, CSV and PNG outputs.
"""
