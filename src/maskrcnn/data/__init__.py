"""COCO-format datasets, image loading, augmentation, batching, synthetic shapes."""

from .coco import CocoDataset
from .coco_records import DatasetError
from .images import ImageError, load_image
from .loader import build_loader, collate
from .shapes import write_shapes_dataset
from .transforms import Compose, RandomHorizontalFlip

__all__ = [
    "CocoDataset",
    "Compose",
    "DatasetError",
    "ImageError",
    "RandomHorizontalFlip",
    "build_loader",
    "collate",
    "load_image",
    "write_shapes_dataset",
]
