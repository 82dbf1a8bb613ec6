"""The model's operators, importable as torchvision's are: `from maskrcnn.ops import roi_align`.

Each is a function of plain tensors (no module state); the submodules keep their names
(`maskrcnn.ops.roi_align` the function, `from maskrcnn.ops.roi_align import ...` the module).
"""

from .box_coder import BoxCoder
from .boxes import batched_nms, box_area, box_iou, clip_boxes, nms, remove_small_boxes
from .mask_paste import paste_masks
from .mask_paste_grid import paste_masks_grid_sample
from .roi_align import roi_align
from .roi_align_masks import roi_align_masks
from .roi_pool import roi_pool
from .roi_warp import roi_warp

__all__ = [
    "BoxCoder",
    "batched_nms",
    "box_area",
    "box_iou",
    "clip_boxes",
    "nms",
    "paste_masks",
    "paste_masks_grid_sample",
    "remove_small_boxes",
    "roi_align",
    "roi_align_masks",
    "roi_pool",
    "roi_warp",
]
