"""examples/client.py without a server: bad --out values, a missing tritonclient and a failed request are one
``error:`` line and exit 2, before or without writing anything (the end-to-end run is in tests/serving)."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from semask_deploy.assets import sample_images

CLIENT = Path(__file__).resolve().parents[2] / "examples" / "client.py"


@pytest.fixture
def client():
    spec = importlib.util.spec_from_file_location("semask_example_client", CLIENT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


@pytest.mark.parametrize("out, message", [
    ("labels.jpg", "must name a .png file"),
    ("missing/labels.png", "folder of --out does not exist"),
    ("adir.png", "is a folder"),
])
def test_bad_out_is_refused_before_the_request(client, tmp_path, capsys, monkeypatch, out, message):
    (tmp_path / "adir.png").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(client, "segment", lambda *a, **k: pytest.fail("sent a request for an unusable --out"))
    assert client.main(["--image", str(sample_images()[0]), "--out", out]) == 2
    assert message in _error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adir.png"]  # no temporary file left


def test_without_tritonclient_says_what_to_install(client, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tritonclient", None)
    monkeypatch.setitem(sys.modules, "tritonclient.http", None)
    assert client.main(["--image", str(sample_images()[0]), "--out", str(tmp_path / "l.png")]) == 2
    assert "pip install 'tritonclient[http,grpc]'" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_refused_connection_is_one_error_line(client, tmp_path, capsys, monkeypatch):
    def refused(*a, **k):
        raise ConnectionRefusedError(111, "Connection refused")

    fake_http = types.SimpleNamespace(InferenceServerClient=refused)
    monkeypatch.setitem(sys.modules, "tritonclient", types.ModuleType("tritonclient"))
    monkeypatch.setitem(sys.modules, "tritonclient.http", fake_http)
    sys.modules["tritonclient"].http = fake_http
    assert client.main(["--image", str(sample_images()[0]), "--out", str(tmp_path / "l.png"),
                        "--url", "localhost:1"]) == 2
    assert "request to localhost:1 (http) failed" in _error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_labels_are_written_atomically(client, tmp_path, capsys, monkeypatch):
    import cv2
    import numpy as np

    labels = np.arange(12, dtype=np.int32).reshape(3, 4)
    monkeypatch.setattr(client, "segment", lambda *a, **k: labels)
    assert client.main(["--image", str(sample_images()[0]), "--out", str(tmp_path / "l.png")]) == 0
    np.testing.assert_array_equal(cv2.imread(str(tmp_path / "l.png"), cv2.IMREAD_UNCHANGED), labels)
    assert [p.name for p in tmp_path.iterdir()] == ["l.png"]
