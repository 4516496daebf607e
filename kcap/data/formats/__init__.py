"""One module per caption-file format, each reading into a `CaptionDataset`.

`kcap.data.caption_files.read_captions` picks the reader (or detects the format);
import from there unless you need one reader on its own.
"""

from kcap.data.formats.coco import read_coco_captions
from kcap.data.formats.common import CaptionFileError, find_images_dir, resolve_image
from kcap.data.formats.csv_captions import read_csv_captions
from kcap.data.formats.flickr8k import read_flickr8k_captions
from kcap.data.formats.karpathy import read_karpathy_captions

__all__ = [
    "CaptionFileError",
    "find_images_dir",
    "read_coco_captions",
    "read_csv_captions",
    "read_flickr8k_captions",
    "read_karpathy_captions",
    "resolve_image",
]
