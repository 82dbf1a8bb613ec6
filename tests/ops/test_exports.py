"""The public ops import from maskrcnn.ops as functions, as torchvision's do."""

import torch
import torchvision

from maskrcnn import ops


def test_public_ops_are_functions_matching_torchvision():
    feats = torch.rand(1, 3, 16, 16)
    boxes = [torch.tensor([[1.0, 2.0, 9.5, 12.0]])]
    assert callable(ops.roi_align) and callable(ops.roi_pool) and callable(ops.paste_masks)
    torch.testing.assert_close(ops.roi_align(feats, boxes, 4, 1.0, 2),
                               torchvision.ops.roi_align(feats, boxes, 4, 1.0, 2))
    torch.testing.assert_close(ops.roi_pool(feats, boxes, 4),
                               torchvision.ops.roi_pool(feats, boxes, 4))
    a, b = torch.tensor([[0.0, 0, 4, 4]]), torch.tensor([[2.0, 2, 6, 6]])
    torch.testing.assert_close(ops.box_iou(a, b), torchvision.ops.box_iou(a, b))
    assert set(ops.__all__) <= set(dir(ops))
