"""Warnings that point at the caller's line, not at xent's."""
import sys
import warnings

__all__ = ["warn"]


def caller_stacklevel():
    """The `stacklevel` of `warnings.warn`, called here, that names the first
    frame outside xent (the frame's module is not ``xent`` or ``xent.*``)."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] == "xent":
        frame, level = frame.f_back, level + 1
    return level


def warn(message, category):
    """`warnings.warn(message, category)`, attributed to the caller of xent."""
    warnings.warn(message, category, stacklevel=caller_stacklevel())
