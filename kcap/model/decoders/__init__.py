"""Caption decoders: the `Decoder` interface, the registry of decoders by name, and the decoders."""

from kcap.model.decoders.base import Decoder
from kcap.model.decoders.gru_attention import AttentionDecoder
from kcap.model.decoders.registry import decoder_names, get_decoder, register_decoder
from kcap.model.decoders.transformer import TransformerDecoder

DEFAULT_DECODER = "gru_attention"

__all__ = [
    "DEFAULT_DECODER",
    "AttentionDecoder",
    "Decoder",
    "TransformerDecoder",
    "decoder_names",
    "get_decoder",
    "register_decoder",
]
