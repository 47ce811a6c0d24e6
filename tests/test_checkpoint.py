"""Checkpoint formats and every way a file can be wrong."""

from __future__ import annotations

import os
import pickle
import zipfile

import pytest
import torch

from semask_deploy import load_model
from semask_deploy.checkpoint import read_checkpoint, save_checkpoint
from semask_deploy.errors import CheckpointError


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_official_layout_with_meta_and_optimizer(golden_tiny, tmp_path):
    names = tuple(f"thing{i}" for i in range(150))
    palette = [[i, 255 - i, 7] for i in range(150)]
    path = golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth", meta={"CLASSES": names, "PALETTE": palette})
    model = load_model(path)
    assert model.class_names == names
    assert model.palette[3] == (3, 252, 7)
    assert not model.training
    assert model.config.name == "semask_swin_t_ade20k" and model.config.test_scale == (2048, 512)


def test_default_class_names_by_count(tiny_ckpt):
    model = load_model(tiny_ckpt)
    assert model.class_names[:3] == ("wall", "building", "sky")
    assert len(model.palette) == 150


def test_plain_state_dict_with_module_prefix(golden_tiny, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save({f"module.{k}": v for k, v in golden_tiny.state_dict().items()}, path)
    model = load_model(path)
    x = torch.from_numpy(golden_tiny["input_odd"])
    with torch.inference_mode():
        torch.testing.assert_close(model(x), torch.from_numpy(golden_tiny["seg_logits_odd"]), atol=1e-4, rtol=1e-5)


def test_safetensors_round_trip_keeps_config_and_classes(tiny_ckpt, tmp_path):
    model = load_model(tiny_ckpt)
    model.class_names = tuple(f"c{i}" for i in range(150))
    out = save_checkpoint(model, tmp_path / "m.safetensors")
    again = load_model(out)
    assert again.class_names == model.class_names and again.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_saved_pth_is_official_layout(tiny_ckpt, tmp_path):
    out = save_checkpoint(load_model(tiny_ckpt), tmp_path / "again.pth")
    raw = torch.load(out, weights_only=True)
    assert set(raw) == {"meta", "state_dict"}
    assert all(k.startswith(("backbone.", "decode_head.")) for k in raw["state_dict"])
    assert "CLASSES" in raw["meta"] and "PALETTE" in raw["meta"]
    assert not list(tmp_path.glob(".*tmp*")), "temp files left behind"


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_detectron2_pkl_of_numpy_arrays(golden_tiny, tmp_path, protocol):
    """detectron2 writes {"model": {key: numpy array}, "__author__": …} with pickle: read without running code."""
    sd = read_checkpoint(golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth")).state_dict
    path = tmp_path / "model_final.pkl"
    path.write_bytes(pickle.dumps({"model": {k: v.numpy() for k, v in sd.items()}, "__author__": "someone",
                                   "matching_heuristics": True}, protocol=protocol))
    got = read_checkpoint(path).state_dict
    assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) and got[k].dtype == sd[k].dtype for k in sd)
    torch.save({"model": {k: v.numpy() for k, v in sd.items()}}, tmp_path / "np.pth")  # numpy inside torch.save
    from_numpy = read_checkpoint(tmp_path / "np.pth").state_dict
    assert all(torch.equal(from_numpy[k], sd[k]) for k in sd)
    marker = tmp_path / "pwned"
    path.write_bytes(pickle.dumps({"model": {"a": _Evil(str(marker))}}, protocol=protocol))
    with pytest.raises(CheckpointError, match=r"refusing to load .*\(posix.system\)"):
        read_checkpoint(path)
    assert not marker.exists()


def test_legacy_torch_save_format_is_still_read_and_judged(golden_tiny, tmp_path):
    """torch.save(..., _use_new_zipfile_serialization=False) is a plain pickle too (its first object a magic
    number): it must not be taken for a detectron2 .pkl, neither when fine nor when unsafe."""
    sd = read_checkpoint(golden_tiny.write_mmseg_checkpoint(tmp_path / "m.pth")).state_dict
    torch.save({"state_dict": sd}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert set(read_checkpoint(tmp_path / "legacy.pth").state_dict) == set(sd)
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "meta": _Evil(str(marker))}, tmp_path / "evil.pth",
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"refusing to load .*\(posix.system\)"):
        read_checkpoint(tmp_path / "evil.pth")
    assert not marker.exists()


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        read_checkpoint(tmp_path / "nope.pth")


def test_empty_file(tmp_path):
    (tmp_path / "e.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        read_checkpoint(tmp_path / "e.pth")


def test_truncated_file(tiny_ckpt, tmp_path):
    data = tiny_ckpt.read_bytes()
    (tmp_path / "t.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        read_checkpoint(tmp_path / "t.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "x.pth").write_text("hello, I am a text file\n" * 10)
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint") as info:
        read_checkpoint(tmp_path / "x.pth")
    assert not str(info.value).endswith(")")  # no bare pickle opcode such as "(104)" appended


@pytest.mark.parametrize("container", ["torch", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, container):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"state_dict": {"a": torch.zeros(1)}, "meta": _Evil(str(marker))}
    if container == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match="refusing to load|not a PyTorch checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()


def test_other_architecture(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save({"state_dict": {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 64)}}, path)
    with pytest.raises(CheckpointError, match="not a SeMask-FPN checkpoint"):
        load_model(path)


def test_swin_without_semantic_layers(golden_tiny, tmp_path):
    sd = {k: v for k, v in golden_tiny.state_dict().items() if "semantic_layer" not in k}
    torch.save({"state_dict": sd}, tmp_path / "swin.pth")
    with pytest.raises(CheckpointError, match="no backbone.layers"):
        load_model(tmp_path / "swin.pth")


def test_missing_unexpected_and_misshaped_keys_are_named(golden_tiny, tmp_path):
    sd = golden_tiny.state_dict()
    del sd["backbone.norm3.weight"]
    sd["backbone.extra.weight"] = torch.zeros(3)
    sd["backbone.layers.1.blocks.0.mlp.fc2.bias"] = torch.zeros(5)
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as info:
        load_model(tmp_path / "bad.pth")
    msg = str(info.value)
    assert "1 missing key(s): backbone.norm3.weight" in msg
    assert "1 unexpected key(s): backbone.extra.weight" in msg
    assert "backbone.layers.1.blocks.0.mlp.fc2.bias: expected (192,) float32, got (5,) float32" in msg


def test_an_altered_relative_position_index_is_refused(golden_tiny, tmp_path):
    """eager/sdpa read the stored index, the Triton kernels compute it: an altered one would make the backends
    disagree (0.26 apart), so it is refused; the official one loads."""
    sd = golden_tiny.state_dict()
    key = next(k for k in sd if k.endswith("relative_position_index"))
    torch.save({"state_dict": sd}, tmp_path / "ok.pth")
    load_model(tmp_path / "ok.pth")
    sd[key] = sd[key].flip(1).contiguous()
    torch.save({"state_dict": sd}, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match=f"{key} is not Swin's relative position index for a 7x7 window"):
        load_model(tmp_path / "bad.pth")


def test_corrupt_safetensors(tmp_path):
    p = tmp_path / "m.safetensors"
    p.write_bytes((100).to_bytes(8, "little") + b'{"a": broken')
    with pytest.raises(CheckpointError, match="safetensors"):
        read_checkpoint(p)


def test_zip_that_is_not_torch(tmp_path):
    p = tmp_path / "z.pth"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError):
        read_checkpoint(p)


def test_other_file_kinds_are_not_called_unsafe_pickles(tmp_path):
    """A PNG or an ONNX graph renamed .pth is "not a checkpoint" (it once read "refusing to load: it needs to
    run pickled code (80)", with torch's advice to retry with weights_only=False); an .onnx passed to
    load_model is pointed at Segmenter."""
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
    onnx_like = b"\x08\x08\x12\x07pytorch" + bytes(200)
    for name, data in (("img.pth", png), ("graph.pth", onnx_like)):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(tmp_path / name)
        msg = str(info.value)
        assert "not a PyTorch checkpoint" in msg and "pickled code" not in msg and "weights_only" not in msg, msg
    (tmp_path / "model.onnx").write_bytes(onnx_like)
    with pytest.raises(CheckpointError, match="is an ONNX file, not a PyTorch checkpoint.*Segmenter"):
        load_model(tmp_path / "model.onnx")
    # OpenVINO's weights file beside its IR (semask-export --fmt openvino writes both): pointed at the .xml
    (tmp_path / "m_ov.xml").write_text("<net/>")
    (tmp_path / "m_ov.bin").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(CheckpointError, match=r"weights of the OpenVINO IR m_ov.xml; pass .*m_ov.xml"):
        load_model(tmp_path / "m_ov.bin")


def test_a_bare_state_dict_of_a_custom_backbone_warns_what_was_assumed(golden_tiny, tmp_path):
    """Semantic attention modes are not in the tensor shapes: a bare state dict of a non-official backbone (the
    demo's, saved with torch.save(model.state_dict())) loads with the official rule, and says so."""
    import warnings

    from semask_deploy.assets import demo_checkpoint
    from semask_deploy.errors import SemaskWarning

    bare = tmp_path / "bare.pth"
    torch.save(read_checkpoint(demo_checkpoint()).state_dict, bare)
    with pytest.warns(SemaskWarning, match="no saved model config.*none of the official SeMask.*save_checkpoint"):
        load_model(bare)
    official = golden_tiny.write_mmseg_checkpoint(tmp_path / "t.pth")  # SeMask-T: its modes are known
    with warnings.catch_warnings():
        warnings.simplefilter("error", SemaskWarning)
        load_model(official)
        load_model(demo_checkpoint())  # the config is saved with it
