"""Object detection: bounding boxes, anchor boxes, labelling anchors, non-maximum suppression.

Introduced in the notebooks ``bounding-box``, ``anchor`` and ``multiscale-object-detection`` of
``chapter_computer-vision``; the notebooks show each function again, step by step.

Conventions used throughout:

* a box is four numbers. *Corner* format is ``(x1, y1, x2, y2)`` (upper-left and lower-right
  corner, image coordinates: ``x`` to the right, ``y`` downwards); *center* format is
  ``(cx, cy, w, h)``. A set of boxes is a tensor ``(..., 4)``, usually ``(N, 4)``.
* anchors are in corner format with coordinates *normalised* by the image width and height,
  so that one set of anchors fits any image size; multiply by ``(w, h, w, h)`` to draw them.
* a box is *degenerate* if ``x2 < x1`` or ``y2 < y1``; public functions reject such boxes.
  Zero-area boxes (``x2 == x1``) are allowed; their IoU with anything is 0.
* ground-truth labels of a minibatch are ``(batch_size, num_objects, 5)``: ``(class, x1, y1, x2,
  y2)`` per object; rows with a negative class are padding and ignored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "box_corner_to_center",
    "box_center_to_corner",
    "bbox_to_rect",
    "show_bboxes",
    "multibox_prior",
    "box_iou",
    "assign_anchor_to_bbox",
    "offset_boxes",
    "offset_inverse",
    "multibox_target",
    "nms",
    "multibox_detection",
]

# Offsets are scaled by 1/std so that their typical magnitude is about 1 (d2l's constants:
# means 0, standard deviations 0.1 for centers and 0.2 for log sizes).
CENTER_SCALE = 10.0
SIZE_SCALE = 5.0


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def _check_boxes(
    boxes,
    name: str = "boxes",
    *,
    ndim: int | None = 2,
    corners: bool = True,
    allow_empty: bool = True,
) -> torch.Tensor:
    """Return ``boxes`` as a floating tensor after checking type, shape and (corner) validity."""
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of shape (N, 4), got {type(boxes).__name__}."
        )
    if boxes.ndim == 0 or boxes.shape[-1] != 4:
        raise ValueError(
            f"{name} must have 4 numbers per box in the last dimension (x1, y1, x2, y2 "
            f"or cx, cy, w, h), got shape {tuple(boxes.shape)}."
        )
    if ndim is not None and boxes.ndim != ndim:
        expected = "(N, 4)" if ndim == 2 else f"{ndim} dimensions"
        raise ValueError(f"{name} must have shape {expected}, got {tuple(boxes.shape)}.")
    if not allow_empty and boxes.numel() == 0:
        raise ValueError(
            f"{name} is empty (shape {tuple(boxes.shape)}); at least one box is needed."
        )
    if not boxes.is_floating_point():
        boxes = boxes.float()
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{name} contains NaN or infinite coordinates.")
    if corners:
        bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
        if bad.any():
            index = tuple(int(i) for i in bad.nonzero()[0]) if bad.ndim else ()
            where = f" {index[0] if len(index) == 1 else index}" if index else ""
            raise ValueError(
                f"{name} must be corner boxes (x1, y1, x2, y2) with x1 <= x2 and y1 <= y2; "
                f"box{where} is {boxes[index].tolist()} "
                "(x2 < x1 or y2 < y1: degenerate or wrong format?)."
            )
    return boxes


def _check_positive_size(boxes: torch.Tensor, name: str) -> None:
    if ((boxes[..., 2] <= boxes[..., 0]) | (boxes[..., 3] <= boxes[..., 1])).any():
        raise ValueError(f"{name} must have positive width and height (offsets divide by them).")


def _check_threshold(value: float, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}.")
    return float(value)


# ---------------------------------------------------------------------------------------------
# Box formats and drawing
# ---------------------------------------------------------------------------------------------


def box_corner_to_center(boxes: torch.Tensor) -> torch.Tensor:
    """Corner boxes ``(..., 4)`` as ``(x1, y1, x2, y2)`` -> center boxes ``(cx, cy, w, h)``."""
    boxes = _check_boxes(boxes, ndim=None)
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1), dim=-1)


def box_center_to_corner(boxes: torch.Tensor) -> torch.Tensor:
    """Center boxes ``(..., 4)`` as ``(cx, cy, w, h)`` -> corner boxes ``(x1, y1, x2, y2)``."""
    boxes = _check_boxes(boxes, ndim=None, corners=False)
    if (boxes[..., 2:] < 0).any():
        raise ValueError(
            "center boxes (cx, cy, w, h) must have w >= 0 and h >= 0 (are these corner boxes?)."
        )
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def bbox_to_rect(bbox, color: str = "blue", linewidth: float = 2):
    """A matplotlib ``Rectangle`` patch for one corner box ``(x1, y1, x2, y2)`` in pixels."""
    from matplotlib import patches

    bbox = _check_boxes(torch.as_tensor(bbox, dtype=torch.float32), "bbox", ndim=1)
    x1, y1, x2, y2 = bbox.tolist()
    return patches.Rectangle(
        xy=(x1, y1), width=x2 - x1, height=y2 - y1, fill=False, edgecolor=color, linewidth=linewidth
    )


def show_bboxes(
    axes, bboxes, labels: Sequence[str] | None = None, colors: Sequence[str] | None = None
) -> None:
    """Draw corner boxes ``(N, 4)`` (pixels) on a matplotlib ``axes``, with optional text labels.

    Colours cycle through ``colors`` (default blue, green, red, magenta, cyan).
    """
    bboxes = torch.as_tensor(bboxes).detach().cpu()
    if bboxes.ndim == 1:  # a single box
        bboxes = bboxes[None]
    bboxes = _check_boxes(bboxes, "bboxes")
    if isinstance(labels, str):
        labels = [labels]
    if labels is not None and len(labels) != len(bboxes):
        raise ValueError(f"got {len(labels)} labels for {len(bboxes)} boxes.")
    colors = list(colors) if colors else ["b", "g", "r", "m", "c"]
    for i, bbox in enumerate(bboxes):
        color = colors[i % len(colors)]
        axes.add_patch(bbox_to_rect(bbox, color))
        if labels is not None:
            text_color = "k" if color == "w" else "w"
            axes.text(
                float(bbox[0]),
                float(bbox[1]),
                labels[i],
                va="center",
                ha="center",
                fontsize=9,
                color=text_color,
                bbox=dict(facecolor=color, lw=0),
            )


# ---------------------------------------------------------------------------------------------
# Anchor boxes
# ---------------------------------------------------------------------------------------------


def multibox_prior(
    data: torch.Tensor, sizes: Sequence[float], ratios: Sequence[float]
) -> torch.Tensor:
    """Anchor boxes centred on every pixel of a feature map ``data`` ``(batch, channels, h, w)``.

    Each pixel gets ``len(sizes) + len(ratios) - 1`` anchors: every size with ``ratios[0]``, then
    ``sizes[0]`` with each other ratio. An anchor of size ``s`` in ``(0, 1]`` and aspect ratio
    ``r > 0`` has (normalised) width ``s * sqrt(r) * h / w`` and height ``s / sqrt(r)``, so if the
    feature map has the image's aspect, the anchor is ``s * sqrt(r)`` times the image height wide
    and ``s / sqrt(r)`` times it high (area ``(s * image_height) ** 2``).

    Returns ``(1, h * w * (len(sizes) + len(ratios) - 1), 4)`` normalised corner boxes, pixel by
    pixel in row-major order.
    """
    if not isinstance(data, torch.Tensor) or data.ndim != 4:
        raise ValueError(
            "data must be a feature map tensor of shape (batch, channels, height, width), "
            f"got {getattr(data, 'shape', type(data).__name__)}."
        )
    in_height, in_width = data.shape[-2:]
    if in_height == 0 or in_width == 0:
        raise ValueError(f"data has an empty spatial size {tuple(data.shape[-2:])}.")
    sizes, ratios = list(sizes), list(ratios)
    if not sizes or not ratios:
        raise ValueError(
            f"sizes and ratios must each hold at least one value, got {sizes} and {ratios}."
        )
    if any(not 0 < s <= 1 for s in sizes):
        raise ValueError(f"sizes are fractions of the image and must lie in (0, 1], got {sizes}.")
    if any(not (r > 0 and math.isfinite(r)) for r in ratios):
        raise ValueError(f"ratios (width / height) must be positive and finite, got {ratios}.")
    device = data.device
    size_t = torch.tensor(sizes, device=device)
    ratio_t = torch.tensor(ratios, device=device)
    # (n + m - 1) (size, ratio) pairs: all sizes with ratios[0], sizes[0] with the other ratios.
    s = torch.cat((size_t, size_t[:1].expand(len(ratios) - 1)))
    r = torch.cat((ratio_t[:1].expand(len(sizes)), ratio_t[1:]))
    half_w = s * torch.sqrt(r) * in_height / in_width / 2
    half_h = s / torch.sqrt(r) / 2
    # Pixel centres in normalised coordinates, (h * w,) each, row-major.
    cy = (torch.arange(in_height, device=device) + 0.5) / in_height
    cx = (torch.arange(in_width, device=device) + 0.5) / in_width
    cy, cx = torch.meshgrid(cy, cx, indexing="ij")
    centers = torch.stack((cx, cy, cx, cy), dim=-1).reshape(-1, 1, 4)
    halves = torch.stack((-half_w, -half_h, half_w, half_h), dim=-1)  # (boxes_per_pixel, 4)
    return (centers + halves).reshape(1, -1, 4)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair: corner boxes ``(N, 4)`` and ``(M, 4)`` -> ``(N, M)``.

    Empty inputs give an empty matrix; pairs whose union has zero area get IoU 0.
    """
    boxes1, boxes2 = _check_boxes(boxes1, "boxes1"), _check_boxes(boxes2, "boxes2")

    def area(b):
        return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])

    upper_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    lower_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    inter = (lower_right - upper_left).clamp(min=0).prod(dim=-1)  # (N, M)
    union = area(boxes1)[:, None] + area(boxes2)[None, :] - inter
    return torch.where(
        union > 0, inter / union.clamp(min=torch.finfo(union.dtype).tiny), torch.zeros_like(inter)
    )


def assign_anchor_to_bbox(
    ground_truth: torch.Tensor, anchors: torch.Tensor, iou_threshold: float = 0.5
) -> torch.Tensor:
    """Index of the ground-truth box assigned to each anchor, ``(num_anchors,)``; -1 if none.

    First, each ground-truth box takes the anchor it overlaps most (greedily: the largest IoU in
    the whole matrix, then its row and column are discarded, and so on). Then every remaining
    anchor takes the ground-truth box it overlaps most, if that IoU is at least ``iou_threshold``.
    """
    anchors = _check_boxes(anchors, "anchors", allow_empty=False)
    ground_truth = _check_boxes(ground_truth, "ground_truth")
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    num_anchors, num_gt = len(anchors), len(ground_truth)
    assigned = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gt == 0:
        return assigned
    jaccard = box_iou(anchors, ground_truth)  # (num_anchors, num_gt)
    best_iou, best_gt = jaccard.max(dim=1)
    keep = best_iou >= iou_threshold
    assigned[keep] = best_gt[keep]
    # Each ground-truth box gets its best anchor, overriding the threshold rule.
    jaccard = jaccard.clone()
    for _ in range(min(num_gt, num_anchors)):
        flat = int(torch.argmax(jaccard))
        anchor, gt = divmod(flat, num_gt)
        assigned[anchor] = gt
        jaccard[anchor, :] = -1
        jaccard[:, gt] = -1
    return assigned


def offset_boxes(anchors: torch.Tensor, assigned_bb: torch.Tensor) -> torch.Tensor:
    """Offsets ``(N, 4)`` that move corner ``anchors`` ``(N, 4)`` onto corner boxes ``assigned_bb``.

    With centers/sizes ``(x_a, y_a, w_a, h_a)`` and ``(x_b, y_b, w_b, h_b)``:
    ``(10 (x_b - x_a) / w_a, 10 (y_b - y_a) / h_a, 5 log(w_b / w_a), 5 log(h_b / h_a))``.
    Both sets must have positive widths and heights.
    """
    anchors, assigned_bb = (
        _check_boxes(anchors, "anchors"),
        _check_boxes(assigned_bb, "assigned_bb"),
    )
    if anchors.shape != assigned_bb.shape:
        raise ValueError(
            f"anchors {tuple(anchors.shape)} and assigned_bb {tuple(assigned_bb.shape)} "
            "must have the same shape."
        )
    _check_positive_size(anchors, "anchors")
    _check_positive_size(assigned_bb, "assigned_bb")
    c_anc, c_bb = box_corner_to_center(anchors), box_corner_to_center(assigned_bb)
    offset_xy = CENTER_SCALE * (c_bb[:, :2] - c_anc[:, :2]) / c_anc[:, 2:]
    offset_wh = SIZE_SCALE * torch.log(c_bb[:, 2:] / c_anc[:, 2:])
    return torch.cat((offset_xy, offset_wh), dim=1)


def offset_inverse(anchors: torch.Tensor, offset_preds: torch.Tensor) -> torch.Tensor:
    """Corner boxes ``(N, 4)`` obtained by applying ``offset_preds`` ``(N, 4)`` to ``anchors``.

    The inverse of :func:`offset_boxes`.
    """
    anchors = _check_boxes(anchors, "anchors")
    if not isinstance(offset_preds, torch.Tensor) or offset_preds.shape != anchors.shape:
        raise ValueError(
            f"offset_preds must be a tensor of the anchors' shape {tuple(anchors.shape)}, "
            f"got {tuple(getattr(offset_preds, 'shape', ())) or type(offset_preds).__name__}."
        )
    c_anc = box_corner_to_center(anchors)
    xy = c_anc[:, :2] + offset_preds[:, :2] * c_anc[:, 2:] / CENTER_SCALE
    wh = c_anc[:, 2:] * torch.exp(offset_preds[:, 2:] / SIZE_SCALE)
    return box_center_to_corner(torch.cat((xy, wh), dim=1))


def _check_anchors(anchors: torch.Tensor) -> torch.Tensor:
    if isinstance(anchors, torch.Tensor) and anchors.ndim == 3:
        if anchors.shape[0] != 1:
            raise ValueError(
                "anchors must be (1, num_anchors, 4) or (num_anchors, 4), "
                f"got {tuple(anchors.shape)}."
            )
        anchors = anchors[0]
    return _check_boxes(anchors, "anchors", allow_empty=False)


def multibox_target(
    anchors: torch.Tensor, labels: torch.Tensor, iou_threshold: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Training targets of anchors for a minibatch of ground-truth labels.

    ``anchors``: ``(1, A, 4)`` or ``(A, 4)`` normalised corner boxes; ``labels``: ``(B, G, 5)`` rows
    ``(class, x1, y1, x2, y2)`` (negative class = padding). Returns

    * ``bbox_offset`` ``(B, 4 A)``: offsets of each anchor to its assigned box (0 for background);
    * ``bbox_mask`` ``(B, 4 A)``: 1 for the four offsets of anchors with an object, else 0;
    * ``class_labels`` ``(B, A)``: ``class + 1`` of the assigned box, 0 for background.
    """
    anchors = _check_anchors(anchors)
    if not isinstance(labels, torch.Tensor) or labels.ndim != 3 or labels.shape[-1] != 5:
        raise ValueError(
            "labels must be a tensor (batch_size, num_objects, 5) of rows "
            f"(class, x1, y1, x2, y2), got {getattr(labels, 'shape', type(labels).__name__)}."
        )
    labels = labels.to(anchors.dtype)
    num_anchors = len(anchors)
    offsets, masks, classes = [], [], []
    for i, label in enumerate(labels):
        label = label[label[:, 0] >= 0]  # drop padding rows
        gt = _check_boxes(label[:, 1:], f"labels[{i}] boxes")
        assigned = assign_anchor_to_bbox(gt, anchors, iou_threshold)
        has_object = assigned >= 0
        class_labels = torch.zeros(num_anchors, dtype=torch.long, device=anchors.device)
        class_labels[has_object] = label[assigned[has_object], 0].long() + 1
        offset = torch.zeros(num_anchors, 4, dtype=anchors.dtype, device=anchors.device)
        if has_object.any():
            offset[has_object] = offset_boxes(anchors[has_object], gt[assigned[has_object]])
        mask = has_object.to(anchors.dtype)[:, None].expand(-1, 4)
        offsets.append(offset.reshape(-1))
        masks.append(mask.reshape(-1))
        classes.append(class_labels)
    return torch.stack(offsets), torch.stack(masks), torch.stack(classes)


# ---------------------------------------------------------------------------------------------
# Prediction: non-maximum suppression
# ---------------------------------------------------------------------------------------------


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Non-maximum suppression: indices (int64) of the kept boxes, by decreasing score.

    Repeatedly keeps the highest-scoring remaining box and discards the remaining boxes whose IoU
    with it is greater than ``iou_threshold``. ``boxes``: ``(N, 4)`` corner boxes; ``scores``:
    ``(N,)``. The same contract as ``torchvision.ops.nms``.
    """
    boxes = _check_boxes(boxes)
    if not isinstance(scores, torch.Tensor) or scores.shape != (len(boxes),):
        raise ValueError(
            f"scores must be a tensor of shape ({len(boxes)},), one per box, got "
            f"{tuple(getattr(scores, 'shape', ())) or type(scores).__name__}."
        )
    iou_threshold = _check_threshold(iou_threshold, "iou_threshold")
    if torch.isnan(scores).any():  # argsort puts NaN first: the NaN box would be kept, its neighbours dropped
        raise ValueError(f"scores has NaN at index {torch.isnan(scores).nonzero()[:, 0].tolist()}: every box needs a "
                         "real score. Look for a NaN loss or input upstream, or drop those boxes first.")
    order = torch.argsort(scores, descending=True)
    keep = []
    while order.numel() > 0:
        best = order[0]
        keep.append(best)
        if order.numel() == 1:
            break
        iou = box_iou(boxes[best][None], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return torch.stack(keep) if keep else torch.empty(0, dtype=torch.long, device=boxes.device)


def multibox_detection(
    cls_probs: torch.Tensor,
    offset_preds: torch.Tensor,
    anchors: torch.Tensor,
    nms_threshold: float = 0.5,
    pos_threshold: float = 0.009,
) -> torch.Tensor:
    """Predicted boxes from class probabilities and offsets of anchors, after NMS.

    ``cls_probs``: ``(B, 1 + num_classes, A)`` (row 0 = background); ``offset_preds``: ``(B, 4 A)``;
    ``anchors``: ``(1, A, 4)`` or ``(A, 4)``. Each anchor predicts its most likely non-background
    class; NMS (over all classes at once) removes overlapping predictions. Returns ``(B, A, 6)``
    rows ``(class, confidence, x1, y1, x2, y2)``: kept predictions first, by decreasing confidence,
    then the others; class is -1 for suppressed predictions and those with confidence below
    ``pos_threshold``.

    Differences from d2l's ``multibox_detection`` (same classes, order and boxes otherwise):

    * the default ``pos_threshold`` is 0.009; d2l's is 0.009999999 (just under 0.01), so a
      prediction with confidence in [0.009, 0.009999999) keeps its class here and gets -1 there;
    * a row below ``pos_threshold`` keeps its confidence (the best non-background probability)
      here; d2l replaces it by ``1 - confidence``. Rows at or above the threshold, suppressed
      or not, have the same confidence in both, so select detections by ``class >= 0``.
    """
    anchors = _check_anchors(anchors)
    num_anchors = len(anchors)
    if (
        not isinstance(cls_probs, torch.Tensor)
        or cls_probs.ndim != 3
        or cls_probs.shape[2] != num_anchors
        or cls_probs.shape[1] < 2
    ):
        raise ValueError(
            f"cls_probs must be (batch_size, 1 + num_classes, {num_anchors}) with at least one "
            f"class, got {getattr(cls_probs, 'shape', type(cls_probs).__name__)}."
        )
    batch_size = cls_probs.shape[0]
    if not isinstance(offset_preds, torch.Tensor) or offset_preds.shape != (
        batch_size,
        4 * num_anchors,
    ):
        raise ValueError(
            f"offset_preds must be ({batch_size}, {4 * num_anchors}), got "
            f"{getattr(offset_preds, 'shape', type(offset_preds).__name__)}."
        )
    nms_threshold = _check_threshold(nms_threshold, "nms_threshold")
    pos_threshold = _check_threshold(pos_threshold, "pos_threshold")
    out = []
    for probs, offsets in zip(cls_probs, offset_preds):
        conf, class_id = probs[1:].max(dim=0)  # (A,) each: best non-background class
        predicted = offset_inverse(anchors, offsets.reshape(-1, 4))
        keep = nms(predicted, conf, nms_threshold)
        is_kept = torch.zeros(num_anchors, dtype=torch.bool, device=anchors.device)
        is_kept[keep] = True
        order = torch.cat((keep, torch.nonzero(~is_kept).flatten()))
        class_id = torch.where(is_kept & (conf >= pos_threshold), class_id, -1)
        out.append(
            torch.cat(
                (class_id[order, None].to(conf.dtype), conf[order, None], predicted[order]), dim=1
            )
        )
    return torch.stack(out)
