"""load_image / read_image_size: formats, modes, EXIF orientation, and broken files."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from maskrcnn.data.images import ImageError, load_image, read_image_size


def _expected(rgb_uint8: np.ndarray) -> torch.Tensor:
    """[H, W, 3] uint8 -> [3, H, W] float32 in [0, 1]."""
    return torch.from_numpy(rgb_uint8.copy()).permute(2, 0, 1).float() / 255.0


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(13, 21, 3), dtype=np.uint8)


def test_rgb_png_exact(tmp_path, rgb):
    path = tmp_path / "a.png"
    Image.fromarray(rgb).save(path)
    image = load_image(path)
    assert image.dtype == torch.float32 and image.shape == (3, 13, 21)
    torch.testing.assert_close(image, _expected(rgb))


def test_jpeg_close_to_source(tmp_path):
    smooth = np.zeros((32, 48, 3), dtype=np.uint8)
    smooth[:, :, 0] = np.linspace(0, 255, 48, dtype=np.uint8)[None, :]
    smooth[:, :, 2] = 90
    path = tmp_path / "a.jpg"
    Image.fromarray(smooth).save(path, quality=95)
    image = load_image(path)
    assert image.shape == (3, 32, 48)
    assert (image - _expected(smooth)).abs().mean() < 0.02


@pytest.mark.parametrize("mode", ["L", "LA"])
def test_grayscale_replicated(tmp_path, rgb, mode):
    gray = rgb[:, :, 0]
    img = Image.fromarray(gray)
    if mode == "LA":
        img = Image.merge("LA", [img, Image.fromarray(rgb[:, :, 1])])
    img.save(tmp_path / "g.png")
    image = load_image(tmp_path / "g.png")
    torch.testing.assert_close(image, _expected(np.repeat(gray[:, :, None], 3, axis=2)))


def test_rgba_alpha_dropped(tmp_path, rgb):
    alpha = np.random.default_rng(1).integers(0, 256, size=rgb.shape[:2], dtype=np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "a.png")
    torch.testing.assert_close(load_image(tmp_path / "a.png"), _expected(rgb))


def test_16bit_png_scaled(tmp_path):
    values = np.random.default_rng(2).integers(0, 65536, size=(9, 11), dtype=np.uint16)
    values[0, 0], values[0, 1] = 0, 65535
    Image.fromarray(values).save(tmp_path / "d.png")
    image = load_image(tmp_path / "d.png")
    expected = torch.from_numpy(values.astype(np.float64) / 65535.0).float()
    torch.testing.assert_close(image, expected.expand(3, 9, 11))
    assert image.max() == 1.0 and image.min() == 0.0


@pytest.mark.parametrize("transparency", [False, True])
def test_palette_expanded(tmp_path, transparency):
    palette = np.random.default_rng(3).integers(0, 256, size=(256, 3), dtype=np.uint8)
    index = np.random.default_rng(4).integers(0, 256, size=(7, 10), dtype=np.uint8)
    img = Image.frombytes("P", (index.shape[1], index.shape[0]), index.tobytes())
    img.putpalette(palette.reshape(-1).tolist())
    kwargs = {"transparency": 5} if transparency else {}
    img.save(tmp_path / "p.png", **kwargs)
    torch.testing.assert_close(load_image(tmp_path / "p.png"), _expected(palette[index]))


# EXIF orientation -> how the stored pixels turn into the displayed image.
_ORIENTATIONS = {
    3: lambda t: torch.rot90(t, 2, dims=(1, 2)),
    6: lambda t: torch.rot90(t, -1, dims=(1, 2)),  # stored rotated: display turns clockwise
    8: lambda t: torch.rot90(t, 1, dims=(1, 2)),
    2: lambda t: t.flip(2),
}


@pytest.mark.parametrize("suffix", ["jpg", "png"])
@pytest.mark.parametrize("orientation", sorted(_ORIENTATIONS))
def test_exif_orientation_applied(tmp_path, orientation, suffix):
    pixels = np.zeros((16, 40, 3), dtype=np.uint8)
    pixels[:8, :20] = (255, 0, 0)  # one coloured corner makes every turn distinguishable
    pixels[8:, 30:] = (0, 0, 255)
    img = Image.fromarray(pixels)
    exif = img.getexif()
    exif[0x0112] = orientation
    path = tmp_path / f"r.{suffix}"
    img.save(path, exif=exif.tobytes(), **({"quality": 95} if suffix == "jpg" else {}))
    with Image.open(path) as raw:  # stored pixels, no orientation applied
        stored = _expected(np.array(raw.convert("RGB")))
    expected = _ORIENTATIONS[orientation](stored)
    image = load_image(path)
    torch.testing.assert_close(image, expected)
    assert read_image_size(path) == tuple(expected.shape[1:])


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.png: image file not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="not found"):
        read_image_size(tmp_path / "nope.png")
    assert issubclass(ImageError, ValueError)


def test_not_an_image(tmp_path):
    path = tmp_path / "text.png"
    path.write_text("hello, I am not a picture")
    with pytest.raises(ImageError, match=r"text\.png: not an image file"):
        load_image(path)
    with pytest.raises(ImageError, match=r"text\.png: not an image file"):
        read_image_size(path)


def test_directory(tmp_path):
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def _encoded(fmt: str) -> bytes:
    pixels = np.random.default_rng(5).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.mark.parametrize("keep", [0.5, 0.95])
@pytest.mark.parametrize("fmt,suffix", [("JPEG", "jpg"), ("PNG", "png")])
def test_truncated_file_is_an_error(tmp_path, fmt, suffix, keep):
    data = _encoded(fmt)
    path = tmp_path / f"cut.{suffix}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageError, match=rf"cut\.{suffix}: truncated or corrupt"):
        load_image(path)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert read_image_size(path) == (64, 64)  # the header alone is still readable


def test_jpeg_missing_only_end_marker_is_an_error(tmp_path):
    data = _encoded("JPEG")
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[:-2])  # everything but the EOI marker
    with pytest.raises(ImageError, match="truncated"):
        load_image(path)
    (tmp_path / "whole.jpg").write_bytes(data)
    assert load_image(tmp_path / "whole.jpg").shape == (3, 64, 64)
