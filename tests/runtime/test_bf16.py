"""bf16 as a PyTorch precision: native-bf16 CPUs only (clear error elsewhere), sensitive parts fp32, answers kept.

Agreement is judged on the built-in trained demo model on held-out synthetic scenes (≥ 99 % equal labels,
≥ 98 % mIoU agreement vs fp32), only where this CPU has native bf16.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semask_deploy.assets import demo_checkpoint
from semask_deploy.cli.infer import main as infer_main
from semask_deploy.data.synthetic import SyntheticScenes
from semask_deploy.errors import ConfigError
from semask_deploy.metrics import ConfusionMatrix
from semask_deploy.runtime import Segmenter, cpu_info
from semask_deploy.runtime.torch_backend import bf16_autocast

NATIVE = cpu_info.native_bf16()


def test_flags_decide_native_bf16(monkeypatch):
    for flags, want in (({"avx2", "avx512f"}, False), ({"avx512_bf16"}, True), ({"amx_bf16", "amx_tile"}, True)):
        monkeypatch.setattr(cpu_info, "cpu_flags", lambda f=flags: frozenset(f))
        assert cpu_info.native_bf16() is want


def test_bf16_without_native_support_is_a_clear_error(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"sse4_2", "avx2", "avx512f", "avx512_vnni"}))
    with pytest.raises(ConfigError, match="no native bf16.*avx512_bf16.*emulate"):
        Segmenter(demo_checkpoint(), precision="bf16")
    assert infer_main(["--demo", "--precision", "bf16", "--out", str(tmp_path / "o"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "native bf16" in err[0]
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_precision_is_for_checkpoints_only(tmp_path):
    fake = tmp_path / "m.onnx"
    fake.write_bytes(b"x")
    with pytest.raises(ConfigError, match="ONNX Runtime and TensorRT run the precision of the artifact"):
        Segmenter(fake, precision="bf16")


@pytest.mark.skipif(not NATIVE, reason="this CPU has no native bf16 (avx512_bf16 or AMX)")
def test_bf16_keeps_sensitive_parts_fp32_and_the_answers():
    seg16 = Segmenter(demo_checkpoint(), precision="bf16", scale="none")
    seg32 = Segmenter(demo_checkpoint(), scale="none")
    model = seg16.backend.model
    seen: dict[str, set] = {"ln": set(), "sem_q": set(), "linear": set()}
    hooks = [m.register_forward_hook(lambda m, a, o: seen["ln"].add(o.dtype))
             for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    hooks += [m.register_forward_hook(lambda m, a, o: seen["linear"].add(o.dtype))
              for n, m in model.named_modules() if n.endswith("mlp.fc1")]
    hooks += [m.register_forward_hook(lambda m, a, o: seen["sem_q"].add(o[1].dtype))
              for n, m in model.named_modules() if n.endswith("semantic_layer")]
    scenes = SyntheticScenes(seg32.num_classes, (256, 256), seed=1_000_003, length=4)
    x = np.zeros((1, 3, 64, 64), np.float32)
    with torch.inference_mode(), bf16_autocast(model):
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    assert seen["ln"] == {torch.float32} and seen["linear"] == {torch.bfloat16}
    assert seen["sem_q"] == {torch.float32}
    cm = ConfusionMatrix(seg32.num_classes)
    equal = total = 0
    for i in range(len(scenes)):
        a, b = seg16.predict(scenes[i][0]), seg32.predict(scenes[i][0])
        cm.update(a, b)
        equal += int((a == b).sum())
        total += a.size
    assert equal / total >= 0.99 and cm.miou() >= 0.98, (equal / total, cm.miou())


def test_bench_runs_bf16_for_torch_and_openvino_when_named_on_native_cpus(monkeypatch):
    from semask_deploy.benchmarks import runners

    assert "bf16" in runners.PRECISIONS and "bf16" not in runners.DEFAULT_PRECISIONS
    assert "torch" in runners.availability("onnxruntime", "bf16", "cpu", explicit_precision=True)
    assert "CPU" in runners.availability("openvino", "bf16", "cuda", explicit_precision=True)
    for backend in ("torch-sdpa", "openvino"):
        assert "when --precisions names it" in runners.availability(backend, "bf16", "cpu")
        monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx2"}))
        assert "no native bf16" in runners.availability(backend, "bf16", "cpu", explicit_precision=True)
    monkeypatch.setattr(cpu_info, "cpu_flags", lambda: frozenset({"avx512_bf16"}))
    assert runners.availability("torch-sdpa", "bf16", "cpu", explicit_precision=True) is None
    if runners._has_module("openvino") and not runners.exporter_missing():
        assert runners.availability("openvino", "bf16", "cpu", explicit_precision=True) is None
