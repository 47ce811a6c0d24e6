"""The SeMask-FPN training loss: CE(segmentation) + 0.4 · CE(semantic), with mmseg's OHEM sampler.

Both logit maps come at stride 4 and are resized (bilinear, ``align_corners=False``) to the label size
first, as the official ``SeMaskBaseDecodeHead.losses`` does. Reduction follows mmseg 0.x (the version the
official checkpoints were trained with): the per-pixel losses (0 at ignored pixels, × the OHEM weight
when a sampler is used) are averaged over ALL pixels of the batch, ignored ones included
(``avg_non_ignore`` did not exist yet). The OHEM sampler applies to the segmentation term only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

IGNORE_INDEX = 255
SEMANTIC_LOSS_WEIGHT = 0.4  # official ``cate_w``


@dataclass(frozen=True)
class OhemSampler:
    """mmseg ``OHEMPixelSampler``: which pixels of the segmentation loss to keep.

    With ``thresh`` set, a pixel is kept when the softmax probability of its label is below
    ``max(thresh, p_k)``, ``p_k`` being the ``min_kept·N``-th smallest such probability of the batch
    (so at least ``min_kept·N`` pixels of the batch are kept, chosen batch-wide); with ``thresh=None`` the
    ``min_kept·N`` pixels of highest loss in the whole batch are kept (one image may get none).

    Attributes:
        thresh: probability threshold, or None for the loss ranking.
        min_kept: pixels kept per image of the batch (selected over the whole batch: one image may get none).
        ignore_index: label of ignored pixels (never kept).
    """

    thresh: float | None = 0.7
    min_kept: int = 100_000
    ignore_index: int = IGNORE_INDEX

    @torch.no_grad()
    def sample(self, seg_logit: Tensor, label: Tensor) -> Tensor:
        """Per-pixel weights (N, H, W) of 0/1 for logits (N, K, H, W) and labels (N, H, W)."""
        label = label.long()
        batch_kept = self.min_kept * label.shape[0]
        valid = label != self.ignore_index
        weight = seg_logit.new_zeros(label.shape)
        valid_weight = weight[valid]
        if self.thresh is not None:
            prob = F.softmax(seg_logit.float(), dim=1)
            prob = prob.gather(1, label.masked_fill(~valid, 0).unsqueeze(1)).squeeze(1)
            sort_prob, _ = prob[valid].sort()
            min_threshold = sort_prob[min(batch_kept, sort_prob.numel() - 1)] if sort_prob.numel() else 0.0
            threshold = max(float(min_threshold), self.thresh)
            valid_weight[prob[valid] < threshold] = 1.0
        else:
            losses = F.cross_entropy(seg_logit.float(), label, reduction="none", ignore_index=self.ignore_index)
            _, order = losses[valid].sort(descending=True)
            valid_weight[order[:batch_kept]] = 1.0
        weight[valid] = valid_weight
        return weight


def _ce(logits: Tensor, label: Tensor, weight: Tensor | None, ignore_index: int) -> Tensor:
    """mmseg 0.x ``CrossEntropyLoss``: per-pixel CE (× weight), mean over every pixel."""
    loss = F.cross_entropy(logits.float(), label, reduction="none", ignore_index=ignore_index)
    if weight is not None:
        loss = loss * weight
    return loss.mean()


def semask_loss(
    seg_logits: Tensor,
    sem_logits: Tensor,
    label: Tensor,
    *,
    sampler: OhemSampler | None = None,
    sem_weight: float = SEMANTIC_LOSS_WEIGHT,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[Tensor, dict[str, float]]:
    """The SeMask training loss.

    Args:
        seg_logits: (N, K, h, w) segmentation logits at stride 4.
        sem_logits: (N, Kb, h, w) summed semantic maps at stride 4.
        label: (N, H, W) int labels, ``ignore_index`` = ignored. Where the semantic branch has fewer classes
            than the head (Kb < K: the official COCO-Stuff configs pair 150 semantic classes with 171), the
            semantic term ignores the classes it does not have (≥ Kb).
        sampler: optional OHEM sampler for the segmentation term.
        sem_weight: weight of the semantic term (official 0.4).
        ignore_index: ignored label.

    Returns:
        ``(loss, parts)``: the scalar loss to back-propagate and floats ``loss_seg``, ``loss_sem``,
        ``acc`` (pixel accuracy of the segmentation logits on non-ignored pixels, in %).
    """
    label = label.long()
    size = label.shape[-2:]
    seg = F.interpolate(seg_logits, size=size, mode="bilinear", align_corners=False)
    sem = F.interpolate(sem_logits, size=size, mode="bilinear", align_corners=False)
    weight = sampler.sample(seg, label) if sampler is not None else None
    loss_seg = _ce(seg, label, weight, ignore_index)
    sem_label = label
    if sem.shape[1] < seg.shape[1]:  # the official COCO-Stuff pairing: a 150-class semantic branch, 171 classes
        sem_label = label.masked_fill((label >= sem.shape[1]) & (label != ignore_index), ignore_index)
    loss_sem = _ce(sem, sem_label, None, ignore_index)
    loss = loss_seg + sem_weight * loss_sem
    with torch.no_grad():
        valid = label != ignore_index
        n = int(valid.sum())
        acc = float((seg.argmax(1)[valid] == label[valid]).sum()) * 100.0 / n if n else 0.0
    return loss, {"loss_seg": float(loss_seg.detach()), "loss_sem": float(loss_sem.detach()), "acc": acc}
