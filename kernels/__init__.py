"""Fused Triton kernels for SeMask, each beside its pure-PyTorch reference.

Submodules (import them explicitly; importing this package does not import Triton):

- :mod:`semask_deploy.kernels.window_attention`: ``window_attention`` / ``window_attention_ref`` —
  shifted-window multi-head attention of a Swin block, padding, roll and partition folded into addressing.
- :mod:`semask_deploy.kernels.semantic_attention`: ``semantic_attention_global`` (flash-style online
  softmax over all tokens) and ``semantic_attention_window`` with their ``*_ref``.
- :mod:`semask_deploy.kernels.upsample_argmax`: ``upsample_argmax`` / ``upsample_argmax_ref`` — bilinear
  resize (align_corners=False) fused with argmax over classes.
- :mod:`semask_deploy.kernels.ms_deform_attn`: ``ms_deform_attn`` / ``ms_deform_attn_ref`` — Mask2Former's
  multi-scale deformable attention core (bilinear sampling of all levels and points + weighted sum, one
  pass), and ``ms_deform_attn_fast_cpu``, a faster plain-PyTorch formulation (one ``embedding_bag``).

Each public kernel function is also a torch custom op, ``torch.ops.semask.<name>``, registered when its
submodule is imported. Kernels run on CUDA tensors, or on the CPU under Triton's interpreter when
``TRITON_INTERPRET=1`` is set before the submodule is imported; otherwise they raise ``RuntimeError``.
The submodules stay importable without Triton (the ``*_ref`` functions then still work).
"""

from __future__ import annotations

from ._triton import triton_available

__all__ = ["triton_available"]
