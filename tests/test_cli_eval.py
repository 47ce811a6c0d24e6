"""``semask-eval`` on small data sets in every on-disk layout, against a hand-computed mIoU.

Each data set's label maps are the model's own predictions (computed here with the official pipeline
written out step by step) with known pixels changed and others set to ignore; the expected mIoU/aAcc
are then counted with plain numpy, independently of ``semask_deploy.metrics``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semask_deploy import SeMaskConfig, build_model, load_model
from semask_deploy.checkpoint import save_checkpoint
from semask_deploy.cli.eval import main, run_eval
from semask_deploy.data import SyntheticScenes, normalize, read_image_rgb, rescale_image, write_png


def _tiny(num_classes: int, sem_classes: int, test_scale: tuple[int, int], seed: int) -> SeMaskConfig:
    return SeMaskConfig(
        embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7, sem_window_size=7,
        num_classes=num_classes, sem_num_classes=sem_classes, sem_modes=("window", "window", "global", "global"),
        test_scale=test_scale, crop_size=(64, 64), name=f"tiny{num_classes}",
    )


LAYOUTS = {  # dataset: (classes, backbone classes, test scale, scale the eval must use)
    "ade20k": (150, 150, (128, 64), (128, 64)),
    "cityscapes": (19, 19, (96, 48), (96, 48)),
    "coco-stuff": (171, 150, (128, 64), (128, 64)),
    "folder": (8, 8, (128, 64), None),  # folder: no resize by default
}
SIZES = [(40, 56), (50, 36), (33, 47)]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: steady and fast on a small shared CPU (restored afterwards)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    d = tmp_path_factory.mktemp("eval_models")
    for i, (kind, (k, kb, scale, _)) in enumerate(LAYOUTS.items()):
        torch.manual_seed(10 + i)
        m = build_model(_tiny(k, kb, scale, i))
        with torch.no_grad():  # spread the logits so a random model predicts several classes
            m.decode_head.conv_seg.weight.mul_(40.0)
        out[kind] = save_checkpoint(m, d / f"{kind}.pth")
    return out


@functools.lru_cache(maxsize=8)
def _load(ckpt: Path):
    return load_model(ckpt)


def _predict(ckpt: Path, rgb: np.ndarray, scale) -> np.ndarray:
    """The official whole-image pipeline, step by step: rescale, normalise, logits, resize back, argmax."""
    model = _load(ckpt)
    img = rescale_image(rgb, scale) if scale is not None else rgb
    x = torch.from_numpy(normalize(img)[None])
    with torch.inference_mode():
        logits = model(x)
        logits = F.interpolate(logits, size=rgb.shape[:2], mode="bilinear", align_corners=False)
    return logits.argmax(1)[0].numpy()


def _corrupt(pred: np.ndarray, k: int, i: int) -> np.ndarray:
    """Ground truth = prediction with a band of other classes and a block of ignore (255)."""
    gt = pred.copy().astype(np.int64)
    gt[2 + i: 9 + i, :] = (gt[2 + i: 9 + i, :] + 1 + i) % k
    gt[:, -6:] = 5 + i  # a class the model may never predict
    gt[20:30, 3:12] = 255
    return gt


def _expected(preds, gts, k):
    inter, union = np.zeros(k), np.zeros(k)
    correct = total = 0
    for p, g in zip(preds, gts):
        valid = g != 255
        for c in range(k):
            inter[c] += np.sum((p == c) & (g == c) & valid)
            union[c] += np.sum(((p == c) | (g == c)) & valid)
        correct += np.sum((p == g) & valid)
        total += np.sum(valid)
    present = union > 0
    return float(np.mean(inter[present] / union[present])), correct / total, inter, union


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[:, :, ::-1]))


def _build(kind: str, root: Path, ckpt: Path):
    k, _, _, scale = LAYOUTS[kind]
    scenes = SyntheticScenes(num_classes=8, size=(64, 64), seed=3, length=len(SIZES))
    preds, gts = [], []
    for i, (h, w) in enumerate(SIZES):
        rgb = cv2.resize(scenes[i][0], (w, h), interpolation=cv2.INTER_LINEAR)
        if kind == "ade20k":
            img_path, lab_path = root / "images/validation" / f"ADE_val_{i:08d}.jpg", \
                root / "annotations/validation" / f"ADE_val_{i:08d}.png"
        elif kind == "cityscapes":
            stem = f"frankfurt_000000_{i:06d}"
            img_path = root / "leftImg8bit/val/frankfurt" / f"{stem}_leftImg8bit.png"
            lab_path = root / "gtFine/val/frankfurt" / f"{stem}_gtFine_labelTrainIds.png"
        elif kind == "coco-stuff":
            img_path, lab_path = root / "images/test2014" / f"COCO_{i:04d}.jpg", \
                root / "annotations/test2014" / f"COCO_{i:04d}_labelTrainIds.png"
        else:
            img_path, lab_path = root / "images" / f"s{i}.png", root / "labels" / f"s{i}.png"
        _write_rgb(img_path, rgb)
        decoded = read_image_rgb(img_path)  # JPEG is lossy: predict on what the reader will see
        pred = _predict(ckpt, decoded, scale)
        gt = _corrupt(pred, k, i)
        if kind in ("ade20k", "coco-stuff"):  # stored with 0 = unlabeled, class c as c + 1
            stored = np.where(gt == 255, 0, gt + 1)
        else:
            stored = gt
        write_png(lab_path, stored.astype(np.uint8))
        preds.append(pred)
        gts.append(gt)
    if kind == "folder":
        (root / "classes.txt").write_text("\n".join(f"c{j}" for j in range(k)) + "\n")
    return preds, gts


@pytest.mark.parametrize("kind", list(LAYOUTS))
def test_eval_reproduces_hand_computed_miou(kind, models, tmp_path, capsys):
    root = tmp_path / kind
    preds, gts = _build(kind, root, models[kind])
    k = LAYOUTS[kind][0]
    miou, aacc, inter, union = _expected(preds, gts, k)
    assert 0.05 < miou < 0.95  # neither trivial nor perfect
    out = tmp_path / "res.json"
    assert main(["--model", str(models[kind]), "--dataset", kind, "--data-root", str(root), "--out", str(out),
                 "--quiet"]) == 0
    res = json.loads(out.read_text())
    assert res["images"] == len(SIZES)
    assert res["mIoU"] == pytest.approx(miou, abs=1e-12)
    assert res["aAcc"] == pytest.approx(aacc, abs=1e-12)
    want_scale = LAYOUTS[kind][3]
    assert res["scale"] == (list(want_scale) if want_scale else None)
    for c in range(k):
        got = res["per_class"][c]["iou"]
        assert (got is None) if union[c] == 0 else got == pytest.approx(inter[c] / union[c])
    printed = capsys.readouterr().out
    assert f"mIoU {100 * miou:.2f}" in printed
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_per_class_table_and_limit(models, tmp_path, capsys):
    root = tmp_path / "folder"
    preds, gts = _build("folder", root, models["folder"])
    miou, *_ = _expected(preds[:2], gts[:2], 8)
    assert main(["--model", str(models["folder"]), "--dataset", "folder", "--data-root", str(root),
                 "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["class", "IoU", "Acc"] and "c7" in out
    assert f"(2 images, mode whole, scale none): mIoU {100 * miou:.2f}" in out


def test_results_record_what_ran(models, tmp_path):
    out = tmp_path / "res.json"
    assert main(["--model", str(models["folder"]), "--dataset", "synthetic", "--limit", "1", "--quiet",
                 "--out", str(out)]) == 0
    runtime = json.loads(out.read_text())["runtime"]
    assert runtime["backend"] == "torch" and runtime["precision"] == "fp32" and runtime["attention"] == "sdpa"


def test_threads_reach_the_runtime(models):
    """--threads N sets the runtime's threads (torch here: the process-wide count); 0 leaves the default."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert main(["--model", str(models["folder"]), "--dataset", "synthetic", "--limit", "1", "--threads", "1",
                     "--quiet"]) == 0
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)
        assert main(["--model", str(models["folder"]), "--dataset", "synthetic", "--limit", "1", "--threads", "0",
                     "--quiet"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_synthetic_and_slide(models, tmp_path):
    res = run_eval(models["folder"], "synthetic", limit=2)
    assert res["images"] == 2 and 0.0 <= res["mIoU"] <= 1.0 and res["scale"] is None
    root = tmp_path / "folder"
    _build("folder", root, models["folder"])
    res = run_eval(models["folder"], "folder", root, mode="slide", crop=(32, 32), stride=(16, 16))
    assert res["mode"] == "slide" and res["images"] == 3


def _code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code)


def test_errors_one_line_exit_2(models, tmp_path, capsys):
    root = tmp_path / "folder"
    _build("folder", root, models["folder"])
    (root / "classes.txt").write_text("a\nb\nc\n")
    cases = [
        (["--model", str(models["folder"]), "--dataset", "folder", "--data-root", str(root)], "predicts 8 classes"),
        (["--model", str(models["folder"]), "--dataset", "ade20k"], "--data-root"),
        (["--model", str(models["folder"]), "--dataset", "ade20k", "--data-root", str(tmp_path / "nope")], "not found"),
        (["--model", str(models["folder"]), "--dataset", "imagenet", "--data-root", str(root)], "invalid choice"),
        (["--model", str(tmp_path / "x.pth"), "--dataset", "synthetic"], "checkpoint not found"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--limit", "0"], "positive"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--scale", "abc"], "LONGxSHORT"),
        (["--model", str(models["ade20k"]), "--dataset", "synthetic", "--out", str(tmp_path)], "is a folder"),
        (["--dataset", "synthetic"], "required"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--threads", "-1"], "threads must be"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--data-root", str(root)], "drop --data-root"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--split", "val"], "drop --data-root/--split"),
        (["--model", str(models["folder"]), "--dataset", "synthetic", "--out", str(tmp_path / "img.png")],
         "give a .json file name"),  # the results must not replace an image
    ]
    for argv, needle in cases:
        assert _code(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], (argv, err)


@pytest.mark.slow
def test_eval_onnx_model_matches_torch(models, tmp_path):
    """An ONNX export (semask-export's pipeline) evaluated through the same CLI gives the torch mIoU."""
    pytest.importorskip("onnxruntime")
    pipeline = pytest.importorskip("semask_deploy.export.pipeline")
    root = tmp_path / "folder"
    preds, gts = _build("folder", root, models["folder"])
    miou, aacc, *_ = _expected(preds, gts, 8)
    res = pipeline.run_export(pipeline.ExportOptions(ckpt=models["folder"], fmt="onnx", precision="fp32",
                                                     with_logits=True, out=tmp_path / "exp", name="tiny",
                                                     verify=False, quiet=True))
    out = tmp_path / "onnx.json"
    assert main(["--model", str(res.onnx_path), "--dataset", "folder", "--data-root", str(root), "--out", str(out),
                 "--quiet"]) == 0
    got = json.loads(out.read_text())
    assert got["mIoU"] == pytest.approx(miou, abs=5e-3) and got["aAcc"] == pytest.approx(aacc, abs=2e-3)


def test_unwritable_out_is_refused_before_evaluating(models, tmp_path, capsys, monkeypatch):
    """--out below a regular file (or in a read-only folder) is an error before the model even loads, and a
    write that still fails at the end is one error line, not a traceback after the whole evaluation."""
    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    argv = ["--model", str(tmp_path / "none.pth"), "--dataset", "synthetic", "--out", str(blocker / "sub" / "r.json")]
    assert _code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot write --out") and "not a folder" in err[0], err

    import semask_deploy.fileio

    def disk_full(path, obj):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(semask_deploy.fileio, "write_json_atomic", disk_full)
    argv = ["--model", str(models["folder"]), "--dataset", "synthetic", "--limit", "1", "--quiet",
            "--out", str(tmp_path / "r.json")]
    assert _code(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: cannot write --out {tmp_path / 'r.json'}: No space left on device"], err


@pytest.mark.slow  # a static export (~20 CPU-seconds)
def test_eval_of_a_static_export_reports_its_input_size(models, tmp_path, capsys):
    """A --static export resizes every image to its size: the report says so, not the unused test scale."""
    pytest.importorskip("onnxruntime")
    pipeline = pytest.importorskip("semask_deploy.export.pipeline")
    res = pipeline.run_export(pipeline.ExportOptions(ckpt=models["folder"], fmt="onnx", precision="fp32",
                                                     static=(64, 96), out=tmp_path / "exp", name="tiny",
                                                     verify=False, quiet=True))
    out = tmp_path / "r.json"
    assert main(["--model", str(res.onnx_path), "--dataset", "synthetic", "--limit", "2", "--out", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["static_input"] == [64, 96] and got["scale"] is None
    assert "static 64x96 input" in capsys.readouterr().out


def test_summary_names_a_reduced_precision():
    """`semask-eval --precision bf16` on a checkpoint printed a summary that did not say bf16 ran."""
    from semask_deploy.cli.eval import format_result

    result = {"dataset": "folder", "images": 2, "mode": "whole", "scale": None, "mIoU": 0.5, "aAcc": 0.9,
              "mAcc": 0.6, "per_class": [], "runtime": {"backend": "torch", "precision": "bf16 (autocast; …)"}}
    assert format_result(result, per_class=False).splitlines()[-1] == "precision bf16 (autocast; …)"
    result["runtime"]["precision"] = "fp32"
    assert "precision" not in format_result(result, per_class=False)
