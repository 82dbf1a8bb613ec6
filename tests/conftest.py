import pytest
import torch

from maskrcnn.config import preset
from maskrcnn.modeling import build_model


@pytest.fixture(autouse=True)
def _two_threads():
    torch.set_num_threads(2)


def tiny_config(num_classes: int = 3):
    """The small preset at a tiny input size: fast enough for unit tests."""
    cfg = preset("small")
    cfg.input.min_size_train = (96,)
    cfg.input.min_size_test = 96
    cfg.input.max_size = 160
    cfg.roi_heads.num_classes = num_classes
    return cfg


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return build_model(tiny_config())
