"""OpenVINO's CPU plugin must not leave the thread a dangling alternate signal stack (runtime.signal_stack)."""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

from semask_deploy.runtime import signal_stack

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack: Linux")


def test_keep_signal_stack_restores_the_threads_stack():
    before = signal_stack.current()
    buffer = ctypes.create_string_buffer(1 << 16)
    with signal_stack.keep_signal_stack():
        stack = signal_stack._StackT(ctypes.addressof(buffer), 0, len(buffer))
        assert signal_stack._LIBC.sigaltstack(ctypes.byref(stack), None) == 0
        assert signal_stack.current()[0] == ctypes.addressof(buffer)
    assert signal_stack.current() == before


_SCRIPT = textwrap.dedent("""
    import faulthandler, gc, signal, subprocess, sys
    import onnx
    from onnx import TensorProto, helper
    from semask_deploy.runtime import signal_stack
    from semask_deploy.runtime.openvino_backend import compile_model

    faulthandler.enable()  # a Python-owned alternate stack, as under pytest
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 4, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), sys.argv[1])
    before = signal_stack.current()
    first, _ = compile_model(sys.argv[1])
    second, _ = compile_model(sys.argv[1])
    del first; gc.collect()   # released in the order they were made: the case that left a dangling stack
    del second; gc.collect()
    assert signal_stack.current() == before, (signal_stack.current(), before)
    signal.signal(signal.SIGCHLD, lambda *a: None)  # as a DataLoader with workers installs: runs on that stack
    subprocess.run(["true"], check=True)
    print("survived")
""")


def test_two_openvino_models_leave_signals_deliverable(tmp_path):
    """Two models compiled and released in order, then a child exits: the process must survive the SIGCHLD
    (it died with SIGSEGV when every model had a core, and a plugin, of its own)."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnx")
    proc = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path / "relu.onnx")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "survived" in proc.stdout, (proc.returncode, proc.stderr[-2000:])
