"""The captioner and its parts: backbone, augmentation, preprocessing, encoder, attention, decoder."""

from kcap.model.attention import BahdanauAttention
from kcap.model.augmentation import ImageAugmentation
from kcap.model.captioner import Captioner
from kcap.model.decoder import AttentionDecoder
from kcap.model.encoder import FeatureEncoder
from kcap.model.preprocessing import ImagePreprocessing

__all__ = [
    "AttentionDecoder",
    "BahdanauAttention",
    "Captioner",
    "FeatureEncoder",
    "ImageAugmentation",
    "ImagePreprocessing",
]
