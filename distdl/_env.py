"""Numbers that DISTDL_* variables set: the default where unset, else the value, or an error saying what to give."""

import os


def number(name, default, valid, hint, kind=int):
    """``kind(os.environ[name])`` where it parses and ``valid(value)`` holds, ``default`` where ``name`` is unset;
    otherwise ValueError("NAME='text': hint")."""
    text = os.environ.get(name)
    if text is None:
        return default
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not valid(value):
        raise ValueError(f"{name}={text!r}: {hint}")
    return value
