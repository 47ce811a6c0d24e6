"""Serving: ``semask-serve`` (PyTriton) and Triton Inference Server model repositories.

PyTriton is optional (``pip install "semask-deploy[serve]"``); nothing here imports it at module level.
"""

from .batching import Limits, RequestError, check_images, predict_batch

__all__ = ["Limits", "RequestError", "check_images", "predict_batch"]
