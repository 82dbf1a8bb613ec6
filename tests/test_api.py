"""maskrcnn.image_to_tensor: every accepted image type gives the same [3, H, W] float tensor."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from maskrcnn import image_to_tensor


def test_image_types_agree(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    expected = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    path = tmp_path / "image.png"
    Image.fromarray(rgb).save(path)
    rgba = np.concatenate([rgb, np.full((5, 7, 1), 9, np.uint8)], axis=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. torch's warning on read-only numpy arrays
        for image in (rgb, rgba, Image.fromarray(rgb), str(path), expected, (expected * 255)
                      .round().to(torch.uint8)):
            got = image_to_tensor(image)
            assert got.shape == (3, 5, 7) and got.dtype == torch.float32
            torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    gray = image_to_tensor(rgb[:, :, 0])
    assert torch.equal(gray[0], gray[2]) and torch.equal(gray[0], expected[0])


def test_bad_images():
    with pytest.raises(ValueError, match="image tensor"):
        image_to_tensor(torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match="image array"):
        image_to_tensor(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="list"):
        image_to_tensor([1, 2])
