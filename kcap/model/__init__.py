"""The captioner and its parts: backbone, augmentation, preprocessing, encoder, attention, decoders, samplers."""

from kcap.model.attention import BahdanauAttention
from kcap.model.augmentation import ImageAugmentation
from kcap.model.captioner import Captioner
from kcap.model.decoders import AttentionDecoder, Decoder
from kcap.model.encoder import FeatureEncoder
from kcap.model.preprocessing import ImagePreprocessing

__all__ = [
    "AttentionDecoder",
    "BahdanauAttention",
    "Captioner",
    "Decoder",
    "FeatureEncoder",
    "ImageAugmentation",
    "ImagePreprocessing",
]
