"""benchmarks.reduced_precision: graph feeds."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from semask_deploy.benchmarks.reduced_precision import _feed


def test_feed_adds_output_size_only_where_the_graph_has_it():
    """--fp32-onnx with semask-export's default graph (an output_size input) once failed: "Required inputs
    (['output_size']) are missing"."""
    x = np.zeros((1, 3, 48, 80), np.float32)

    def session(*names):
        return SimpleNamespace(get_inputs=lambda: [SimpleNamespace(name=n) for n in names])

    feed = _feed(session("image", "output_size"), x)
    assert set(feed) == {"image", "output_size"} and feed["output_size"].tolist() == [48, 80]
    assert feed["output_size"].dtype == np.int64
    assert set(_feed(session("image"), x)) == {"image"}
