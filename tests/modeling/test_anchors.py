import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList

from maskrcnn.modeling.anchors import AnchorGenerator, cell_anchors


def test_hand_made_grid():
    gen = AnchorGenerator(sizes=[8], aspect_ratios=[1.0], strides=[4])
    feature = torch.zeros(1, 1, 2, 3)  # 2 rows, 3 columns
    (anchors,) = gen([feature], (8, 12))
    centres = [(x, y) for y in (0, 4) for x in (0, 4, 8)]  # location-major, row by row
    expected = torch.tensor([[x - 4, y - 4, x + 4, y + 4] for x, y in centres], dtype=torch.float)
    torch.testing.assert_close(anchors, expected)


def test_cell_anchors_keep_area_and_ratio():
    cells = cell_anchors(64, [0.5, 1.0, 2.0], round_to_int=False)
    widths, heights = cells[:, 2] - cells[:, 0], cells[:, 3] - cells[:, 1]
    torch.testing.assert_close(widths * heights, torch.full((3,), 64.0**2))
    torch.testing.assert_close(heights / widths, torch.tensor([0.5, 1.0, 2.0]))


def test_equal_to_torchvision_fpn_anchors():
    """Five levels of an 800 x 1216 padded batch, including torchvision's P6 stride
    (800 // 13 = 61, not 64)."""
    sizes, ratios = (32, 64, 128, 256, 512), (0.5, 1.0, 2.0)
    image_size = (800, 1216)
    grids = [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    features = [torch.zeros(1, 8, h, w) for h, w in grids]
    ours = AnchorGenerator(sizes, ratios, strides=(4, 8, 16, 32, 64))(features, image_size)
    reference = TVAnchorGenerator(tuple((s,) for s in sizes), (ratios,) * 5)
    image_list = TVImageList(torch.zeros(1, 3, *image_size), [image_size])
    expected = reference(image_list, features)[0]
    torch.testing.assert_close(torch.cat(ours), expected, rtol=0, atol=0)


def test_nominal_strides_for_detectron2():
    gen = AnchorGenerator([32], [1.0], strides=[64], strides_from_grid=False)
    (anchors,) = gen([torch.zeros(1, 1, 13, 19)], (800, 1216))
    assert anchors[1, 0] - anchors[0, 0] == 64
