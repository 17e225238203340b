"""Extractive baselines: what a summariser must beat without learning anything.

Both keep whole utterances (speaker name included), one per line, so ROUGE-Lsum sees them as
separate sentences. Lead-3 is the classic news baseline the SAMSum paper reports; Longest-3 is the
paper's dialogue-specific variant (long utterances tend to carry the content).
"""

from __future__ import annotations

from collections.abc import Callable

from flant5_lib.data import split_turns
from flant5_lib.errors import UserError


def lead3(dialogue: str) -> str:
    """The first three non-empty utterances."""
    return "\n".join(split_turns(dialogue)[:3])


def longest3(dialogue: str) -> str:
    """The three longest utterances (in words, speaker included; ties go to the earlier one), in dialogue order."""
    turns = split_turns(dialogue)
    picked = sorted(sorted(range(len(turns)), key=lambda i: (-len(turns[i].split()), i))[:3])
    return "\n".join(turns[i] for i in picked)


BASELINES: dict[str, Callable[[str], str]] = {"lead3": lead3, "longest3": longest3}


def get_baseline(method: str) -> Callable[[str], str]:
    try:
        return BASELINES[method]
    except KeyError:
        raise UserError(f"baseline {method!r}: choose one of {', '.join(BASELINES)}") from None
