"""How ssgan quotes another library's exception in its own one-line messages."""
from __future__ import annotations

MAX_QUOTED = 200  # characters of a foreign message worth a user's line


def first_line(err: BaseException) -> str:
    """The first line of ``err``'s message (at most ``MAX_QUOTED`` characters), or its type's
    name when it has none."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0][:MAX_QUOTED]


def describe(err: BaseException) -> str:
    """``Type: first line``, or ``Type`` alone when the message is empty."""
    name = type(err).__name__
    line = first_line(err)
    return name if line == name else f"{name}: {line}"
