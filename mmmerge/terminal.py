"""Text for the terminal: names taken from files (tensor names, paths) may hold control characters.

An ANSI escape or a newline inside a tensor name would otherwise recolour the terminal, move the cursor, or
split a one-line error into several lines that look like the program's own output.
"""

from __future__ import annotations


def printable(text: str) -> str:
    """`text` with every non-printable character (control characters, ESC, newlines, tabs, unassigned code
    points) written as its Python escape (`\\x1b`, `\\n`, `\\u200b`); printable text, non-ASCII too, is kept."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
