"""Data: caption files, splits, the embedded synthetic set and the tf.data pipeline."""

from kcap.data.dataset import CaptionDataset, CaptionedImage

__all__ = ["CaptionDataset", "CaptionedImage"]
