import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TorchvisionBoxCoder

from maskrcnn.ops.box_coder import BoxCoder

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


def random_boxes(n: int, gen: torch.Generator, dtype=torch.float32, min_size: float = 1.0):
    xy = torch.rand(n, 2, generator=gen, dtype=dtype) * 500
    wh = min_size + torch.rand(n, 2, generator=gen, dtype=dtype) * 300
    return torch.cat((xy, xy + wh), dim=1)


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encode_matches_torchvision(weights, dtype):
    gen = torch.Generator().manual_seed(0)
    gt, proposals = random_boxes(300, gen, dtype), random_boxes(300, gen, dtype)
    ours = BoxCoder(weights).encode(gt, proposals)
    ref = TorchvisionBoxCoder(weights).encode_single(gt, proposals)
    assert ours.shape == (300, 4) and ours.dtype == dtype
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


@pytest.mark.parametrize("weights", WEIGHTS)
def test_decode_matches_torchvision_including_clamp(weights):
    gen = torch.Generator().manual_seed(1)
    num, classes = 200, 5
    boxes = random_boxes(num, gen)
    deltas = torch.randn(num, classes * 4, generator=gen) * 2
    deltas[::3, 2::4] = 30.0  # dw far above the clip: exp() must not blow up
    deltas[1::3, 3::4] = 40.0
    ours = BoxCoder(weights).decode(deltas, boxes)
    ref = TorchvisionBoxCoder(weights).decode(deltas, [boxes[:120], boxes[120:]])
    assert ours.shape == (num, classes, 4)
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)
    assert torch.isfinite(ours).all()


def test_decode_clamps_large_dw_at_bbox_xform_clip():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    box = torch.tensor([[0.0, 0.0, 10.0, 20.0]])
    decoded = coder.decode(torch.tensor([[0.0, 0.0, 100.0, 1.0]]), box)[0, 0]
    width, height = decoded[2] - decoded[0], decoded[3] - decoded[1]
    torch.testing.assert_close(width, torch.tensor(10.0 * 1000.0 / 16))  # exp(log(1000/16))
    torch.testing.assert_close(height, torch.tensor(20.0 * math.e))
    torch.testing.assert_close((decoded[0] + decoded[2]) / 2, torch.tensor(5.0))


@pytest.mark.parametrize("weights", WEIGHTS)
def test_round_trip(weights):
    gen = torch.Generator().manual_seed(2)
    # sizes within a factor 16 of each other: below the decode clamp (62.5)
    gt = random_boxes(100, gen, torch.float64, min_size=20.0)
    proposals = random_boxes(100, gen, torch.float64, min_size=20.0)
    coder = BoxCoder(weights)
    deltas = coder.encode(gt, proposals)
    torch.testing.assert_close(coder.decode(deltas, proposals)[:, 0], gt, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(coder.encode(gt, gt), torch.zeros(100, 4, dtype=torch.float64))


def test_decode_empty_and_dtype():
    coder = BoxCoder((10.0, 10.0, 5.0, 5.0))
    assert coder.decode(torch.zeros(0, 12), torch.zeros(0, 4)).shape == (0, 3, 4)
    out = coder.decode(torch.zeros(2, 4, dtype=torch.float64), torch.ones(2, 4))
    assert out.dtype == torch.float64 and out.shape == (2, 1, 4)
