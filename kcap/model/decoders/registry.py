"""Decoders by name: what `Captioner(decoder=...)` and `kcap train --decoder` look up."""

from __future__ import annotations

from collections.abc import Callable

from kcap.model.decoders.base import Decoder

_DECODERS: dict[str, type[Decoder]] = {}


def register_decoder(name: str) -> Callable[[type[Decoder]], type[Decoder]]:
    """Class decorator: makes a `Decoder` subclass available as `name`.

    Example:

    ```python
    @register_decoder("mean_context")
    class MeanContextDecoder(Decoder):
        ...

    model = Captioner(backbone, ..., decoder="mean_context")
    ```
    """

    def register(cls: type[Decoder]) -> type[Decoder]:
        if not (isinstance(cls, type) and issubclass(cls, Decoder)):
            raise TypeError(
                f"register_decoder({name!r}) decorates a subclass of kcap.model.decoders.Decoder, not {cls!r}."
            )
        taken = _DECODERS.get(name)
        if taken is not None and _qualified_name(taken) != _qualified_name(cls):
            raise ValueError(f"The decoder name {name!r} is taken by {_qualified_name(taken)}; choose another.")
        _DECODERS[name] = cls
        return cls

    return register


def get_decoder(name: str) -> type[Decoder]:
    """The decoder class registered as `name`.

    Example:

    >>> get_decoder("gru_attention").__name__
    'AttentionDecoder'
    """
    if name not in _DECODERS:
        raise ValueError(f"Unknown decoder {name!r}; the registered decoders are {decoder_names()}.")
    return _DECODERS[name]


def decoder_names() -> list[str]:
    """The registered decoders' names, sorted.

    Example:

    >>> "gru_attention" in decoder_names()
    True
    """
    return sorted(_DECODERS)


def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
