import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402

from common import detection as det  # noqa: E402


def random_boxes(n, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 2
    return torch.cat((xy, xy + wh), dim=1)


# The d2l example: ground truth dog (class 0) and cat (class 1), five anchors.
GROUND_TRUTH = torch.tensor([[0, 0.1, 0.08, 0.52, 0.92], [1, 0.55, 0.2, 0.9, 0.88]])
ANCHORS = torch.tensor(
    [
        [0, 0.1, 0.2, 0.3],
        [0.15, 0.2, 0.4, 0.4],
        [0.63, 0.05, 0.88, 0.98],
        [0.66, 0.45, 0.8, 0.8],
        [0.57, 0.3, 0.92, 0.9],
    ]
)


# --- formats -------------------------------------------------------------------------------


def test_corner_center_round_trip_and_torchvision():
    boxes = random_boxes(20)
    center = det.box_corner_to_center(boxes)
    torch.testing.assert_close(center, torchvision.ops.box_convert(boxes, "xyxy", "cxcywh"))
    torch.testing.assert_close(det.box_center_to_corner(center), boxes)
    # batched (..., 4) and an explicit example
    torch.testing.assert_close(
        det.box_corner_to_center(torch.tensor([[[0.0, 0, 4, 2]]])), torch.tensor([[[2.0, 1, 4, 2]]])
    )


def test_formats_reject_bad_input():
    with pytest.raises(TypeError, match="torch.Tensor"):
        det.box_corner_to_center([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match="4 numbers per box"):
        det.box_corner_to_center(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="degenerate"):
        det.box_corner_to_center(torch.tensor([[0.0, 0, 1, 1], [2.0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="w >= 0"):
        det.box_center_to_corner(torch.tensor([[0.5, 0.5, -1.0, 1.0]]))
    with pytest.raises(ValueError, match="NaN"):
        det.box_corner_to_center(torch.tensor([[0.0, 0, float("nan"), 1]]))
    assert det.box_corner_to_center(torch.zeros(0, 4)).shape == (0, 4)  # empty is fine here


def test_drawing_adds_patches_and_checks_labels():
    fig, ax = plt.subplots()
    rect = det.bbox_to_rect([1.0, 2.0, 4.0, 8.0], "red")
    assert (rect.get_x(), rect.get_y(), rect.get_width(), rect.get_height()) == (1, 2, 3, 6)
    det.show_bboxes(ax, torch.tensor([[0.0, 0, 1, 1], [1.0, 1, 2, 2]]), ["a", "b"])
    assert len(ax.patches) == 2 and len(ax.texts) == 2
    det.show_bboxes(ax, [0.0, 0, 3, 3], "single")
    assert len(ax.patches) == 3
    with pytest.raises(ValueError, match="2 labels for 1 boxes"):
        det.show_bboxes(ax, torch.tensor([[0.0, 0, 1, 1]]), ["a", "b"])
    with pytest.raises(ValueError, match="degenerate"):
        det.bbox_to_rect([4.0, 2.0, 1.0, 8.0])
    with pytest.raises(ValueError, match="4 numbers"):
        det.show_bboxes(ax, torch.zeros(2, 3))
    plt.close(fig)


# --- anchors -------------------------------------------------------------------------------


def test_multibox_prior_shape_order_and_sizes():
    h, w = 3, 5
    sizes, ratios = [0.75, 0.5, 0.25], [1, 2, 0.5]
    anchors = det.multibox_prior(torch.zeros(2, 3, h, w), sizes, ratios)
    assert anchors.shape == (1, h * w * 5, 4)
    per_pixel = anchors.reshape(h, w, 5, 4)
    center = det.box_corner_to_center(per_pixel)
    # every anchor of pixel (i, j) is centred on it
    torch.testing.assert_close(center[1, 2, :, 0], torch.full((5,), 2.5 / w))
    torch.testing.assert_close(center[1, 2, :, 1], torch.full((5,), 1.5 / h))
    # widths in pixels s*sqrt(r)*h, heights s/sqrt(r)*h;
    # order: sizes with r[0], then s[0] with r[1:]
    pairs = [(0.75, 1), (0.5, 1), (0.25, 1), (0.75, 2), (0.75, 0.5)]
    torch.testing.assert_close(
        center[0, 0, :, 2] * w, torch.tensor([s * math.sqrt(r) * h for s, r in pairs])
    )
    torch.testing.assert_close(
        center[0, 0, :, 3] * h, torch.tensor([s / math.sqrt(r) * h for s, r in pairs])
    )


@pytest.mark.parametrize(
    "sizes,ratios,match",
    [
        ([], [1], "at least one"),
        ([0.5], [], "at least one"),
        ([0.0], [1], r"\(0, 1\]"),
        ([1.5], [1], r"\(0, 1\]"),
        ([0.5], [-1], "positive"),
        ([0.5], [0], "positive"),
    ],
)
def test_multibox_prior_rejects_bad_sizes_and_ratios(sizes, ratios, match):
    with pytest.raises(ValueError, match=match):
        det.multibox_prior(torch.zeros(1, 1, 2, 2), sizes, ratios)


def test_multibox_prior_rejects_bad_feature_map():
    with pytest.raises(ValueError, match="batch, channels, height, width"):
        det.multibox_prior(torch.zeros(2, 2), [0.5], [1])
    with pytest.raises(ValueError, match="empty spatial size"):
        det.multibox_prior(torch.zeros(1, 1, 0, 3), [0.5], [1])


# --- IoU -----------------------------------------------------------------------------------


def test_box_iou_matches_torchvision_and_hand_values():
    a, b = random_boxes(30, 1), random_boxes(7, 2)
    torch.testing.assert_close(det.box_iou(a, b), torchvision.ops.box_iou(a, b))
    # two unit squares overlapping by half: intersection 0.5, union 1.5
    iou = det.box_iou(
        torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([[0.5, 0, 1.5, 1], [2.0, 2, 3, 3]])
    )
    torch.testing.assert_close(iou, torch.tensor([[1 / 3, 0.0]]))


def test_box_iou_edge_cases_and_bad_input():
    assert det.box_iou(torch.zeros(0, 4), random_boxes(3)).shape == (0, 3)
    point = torch.tensor([[1.0, 1, 1, 1]])
    assert det.box_iou(point, point).item() == 0.0  # zero union: defined as 0, not NaN
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        det.box_iou(torch.zeros(2, 2, 4), random_boxes(3))
    with pytest.raises(ValueError, match="4 numbers per box"):
        det.box_iou(torch.zeros(3, 2), random_boxes(3))
    with pytest.raises(ValueError, match="boxes2 .*box 1"):
        det.box_iou(random_boxes(2), torch.tensor([[0.0, 0, 1, 1], [0.0, 1, 1, 0.5]]))


# --- labelling anchors ---------------------------------------------------------------------


def test_assign_anchor_to_bbox_on_d2l_example():
    assigned = det.assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], ANCHORS, 0.5)
    # greedy step: anchor 4 -> cat (IoU 0.75, the largest), then anchor 1 -> dog (0.14, the dog's
    # best); threshold step: anchor 2 -> cat (0.57 >= 0.5); anchors 0 and 3 stay unassigned.
    assert assigned.tolist() == [-1, 0, 1, -1, 1]


def test_assign_anchor_every_ground_truth_gets_an_anchor_and_threshold_edges():
    anchors = torch.tensor([[0.0, 0, 0.2, 0.2], [0.5, 0.5, 1, 1]])
    gt = torch.tensor([[0.0, 0, 0.1, 0.1]])  # IoU 0.25 with anchor 0: below 0.5 but still assigned
    assert det.assign_anchor_to_bbox(gt, anchors).tolist() == [0, -1]
    assert det.assign_anchor_to_bbox(torch.zeros(0, 4), anchors).tolist() == [-1, -1]
    # more ground truths than anchors: only one can win the single anchor
    assert det.assign_anchor_to_bbox(
        torch.tensor([[0.0, 0, 0.2, 0.2], [0.0, 0, 0.1, 0.1]]), anchors[:1]
    ).tolist() == [0]


def test_assign_anchor_rejects_bad_input():
    with pytest.raises(ValueError, match="anchors is empty"):
        det.assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], torch.zeros(0, 4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.assign_anchor_to_bbox(GROUND_TRUTH[:, 1:], ANCHORS, 1.5)
    with pytest.raises(ValueError, match="ground_truth.*degenerate"):
        det.assign_anchor_to_bbox(torch.tensor([[0.5, 0.5, 0.1, 0.9]]), ANCHORS)


def test_offsets_round_trip_and_hand_value():
    anchors, boxes = random_boxes(10, 3) + 0.01, random_boxes(10, 4) + 0.01
    offsets = det.offset_boxes(anchors, boxes)
    torch.testing.assert_close(det.offset_inverse(anchors, offsets), boxes)
    # anchor (0,0,2,2) -> box (1,0,3,4): center moves by (1, 1), size grows (1, 2)
    torch.testing.assert_close(
        det.offset_boxes(torch.tensor([[0.0, 0, 2, 2]]), torch.tensor([[1.0, 0, 3, 4]])),
        torch.tensor([[5.0, 5.0, 0.0, 5 * math.log(2)]]),
    )
    torch.testing.assert_close(det.offset_inverse(anchors, torch.zeros(10, 4)), anchors)


def test_offsets_reject_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        det.offset_boxes(random_boxes(3), random_boxes(2))
    with pytest.raises(ValueError, match="positive width"):
        det.offset_boxes(torch.tensor([[0.0, 0, 0, 1]]), torch.tensor([[0.0, 0, 1, 1]]))
    with pytest.raises(ValueError, match="offset_preds"):
        det.offset_inverse(random_boxes(3), torch.zeros(3, 2))


def test_multibox_target_on_d2l_example_with_padding():
    padded = torch.cat((GROUND_TRUTH, torch.tensor([[-1.0, 0, 0, 0, 0]])))[None]  # padding row
    offset, mask, cls = det.multibox_target(ANCHORS[None], padded)
    assert cls.tolist() == [[0, 1, 2, 0, 2]]
    assert mask.tolist() == [[0] * 4 + [1] * 8 + [0] * 4 + [1] * 4]
    assert offset.shape == (1, 20) and (offset[mask == 0] == 0).all()
    assigned = GROUND_TRUTH[[0, 1, 1], 1:]
    torch.testing.assert_close(
        offset[0].reshape(5, 4)[[1, 2, 4]], det.offset_boxes(ANCHORS[[1, 2, 4]], assigned)
    )


def test_multibox_target_rejects_bad_input():
    with pytest.raises(ValueError, match="batch_size, num_objects, 5"):
        det.multibox_target(ANCHORS, GROUND_TRUTH)
    with pytest.raises(ValueError, match=r"\(1, num_anchors, 4\)"):
        det.multibox_target(ANCHORS.expand(2, 5, 4), GROUND_TRUTH[None])
    with pytest.raises(ValueError, match="degenerate"):
        det.multibox_target(ANCHORS, torch.tensor([[[0.0, 0.5, 0.5, 0.1, 0.9]]]))
    with pytest.raises(ValueError, match="anchors is empty"):
        det.multibox_target(torch.zeros(0, 4), GROUND_TRUTH[None])


# --- NMS and detection ---------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_nms_matches_torchvision(threshold):
    boxes = random_boxes(200, 5)
    scores = torch.rand(200, generator=torch.Generator().manual_seed(6))
    assert torch.equal(
        det.nms(boxes, scores, threshold), torchvision.ops.nms(boxes, scores, threshold)
    )


def test_nms_edge_cases_and_bad_input():
    assert det.nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []
    assert det.nms(torch.tensor([[0.0, 0, 1, 1]]), torch.tensor([0.3]), 0.5).tolist() == [0]
    with pytest.raises(ValueError, match=r"scores must be a tensor of shape \(3,\)"):
        det.nms(random_boxes(3), torch.rand(4), 0.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        det.nms(random_boxes(3), torch.rand(3), -0.1)
    with pytest.raises(ValueError, match="degenerate"):
        det.nms(torch.tensor([[1.0, 1, 0, 0]]), torch.rand(1), 0.5)


def test_multibox_detection_on_d2l_example():
    anchors = torch.tensor(
        [
            [0.1, 0.08, 0.52, 0.92],
            [0.08, 0.2, 0.56, 0.95],
            [0.15, 0.3, 0.62, 0.91],
            [0.55, 0.2, 0.9, 0.88],
        ]
    )
    cls_probs = torch.tensor([[0.0] * 4, [0.9, 0.8, 0.7, 0.1], [0.1, 0.2, 0.3, 0.9]])[None]
    out = det.multibox_detection(cls_probs, torch.zeros(1, 16), anchors[None], nms_threshold=0.5)
    assert out.shape == (1, 4, 6)
    assert out[0, :, 0].tolist() == [0, 1, -1, -1]  # dog, cat kept; two dog boxes suppressed
    torch.testing.assert_close(out[0, :, 1], torch.tensor([0.9, 0.9, 0.8, 0.7]))
    torch.testing.assert_close(out[0, :2, 2:], anchors[[0, 3]])
    # a high pos_threshold turns every prediction into background
    assert (
        det.multibox_detection(cls_probs, torch.zeros(1, 16), anchors, pos_threshold=0.95)[0, :, 0]
        == -1
    ).all()


def test_multibox_detection_rejects_bad_input():
    anchors = random_boxes(4)
    with pytest.raises(ValueError, match="cls_probs"):
        det.multibox_detection(torch.rand(1, 3, 5), torch.zeros(1, 16), anchors)
    with pytest.raises(ValueError, match="cls_probs"):
        det.multibox_detection(torch.rand(1, 1, 4), torch.zeros(1, 16), anchors)
    with pytest.raises(ValueError, match="offset_preds"):
        det.multibox_detection(torch.rand(1, 3, 4), torch.zeros(1, 12), anchors)
    with pytest.raises(ValueError, match="nms_threshold"):
        det.multibox_detection(torch.rand(1, 3, 4), torch.zeros(1, 16), anchors, nms_threshold=2)


def test_nms_refuses_nan_scores():
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [5.0, 5.0, 6.0, 6.0]])
    scores = torch.tensor([0.9, float("nan"), 0.8])
    # torchvision keeps the NaN box first and drops the 0.9 box that overlaps it: silent garbage
    assert torchvision.ops.nms(boxes, scores, 0.5).tolist()[0] == 1
    with pytest.raises(ValueError, match=r"scores has NaN at index \[1\]"):
        det.nms(boxes, scores, 0.5)
