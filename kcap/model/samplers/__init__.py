"""Samplers: turning encoded images into token ids with a decoder (greedy, beam search, random).

Each is a module; `kcap.model.samplers.base` holds what they share and the
return convention `(token_ids, attention, scores)`.
"""

from __future__ import annotations

from kcap.model.samplers.base import DEFAULT_LENGTH_PENALTY, Decoded, Sampler, caption_lengths, length_penalty
from kcap.model.samplers.beam import BeamSampler
from kcap.model.samplers.greedy import GreedySampler
from kcap.model.samplers.random import RandomSampler

SAMPLERS = {"greedy": GreedySampler, "beam": BeamSampler, "random": RandomSampler}


def get_sampler(identifier: str | Sampler) -> Sampler:
    """A sampler from its name (with its default settings) or a `Sampler` itself.

    Example:

    >>> get_sampler("beam")
    BeamSampler(beam_size=3, length_penalty=0.7)
    """
    if isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, str) and identifier in SAMPLERS:
        return SAMPLERS[identifier]()
    raise ValueError(f"Unknown sampler {identifier!r}; give one of {sorted(SAMPLERS)} or a Sampler instance.")


def sampler_for(
    beam_size: int = 1,
    temperature: float | None = None,
    length_penalty: float = DEFAULT_LENGTH_PENALTY,
    seed: int = 0,
    no_repeat_ngram: int = 0,
) -> Sampler:
    """The sampler `kcap caption --beam-size/--temperature/--no-repeat-ngram` asks for:
    random with a temperature, beam search with `beam_size > 1`, else greedy.

    Example:

    >>> sampler_for(beam_size=5)
    BeamSampler(beam_size=5, length_penalty=0.7)
    >>> sampler_for(temperature=0.8, seed=1)
    RandomSampler(temperature=0.8, top_k=None, seed=1)
    >>> sampler_for(no_repeat_ngram=3)
    GreedySampler(no_repeat_ngram=3)
    """
    if isinstance(beam_size, bool) or not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size must be an integer >= 1, got {beam_size!r}.")
    if temperature is not None:
        if beam_size > 1:
            raise ValueError(
                f"Choose sampling (temperature={temperature}) or beam search (beam_size={beam_size}), not both."
            )
        if no_repeat_ngram:
            raise ValueError(
                f"no_repeat_ngram={no_repeat_ngram} guards greedy decoding and beam search, not sampling "
                f"(temperature={temperature}); drop one of them."
            )
        return RandomSampler(temperature, seed=seed)
    if beam_size > 1:
        return BeamSampler(beam_size, length_penalty, no_repeat_ngram)
    return GreedySampler(no_repeat_ngram)


__all__ = [
    "DEFAULT_LENGTH_PENALTY",
    "SAMPLERS",
    "BeamSampler",
    "Decoded",
    "GreedySampler",
    "RandomSampler",
    "Sampler",
    "caption_lengths",
    "get_sampler",
    "length_penalty",
    "sampler_for",
]
