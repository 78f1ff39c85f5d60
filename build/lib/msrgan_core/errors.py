"""The base of every error a user can cause and mend: the command line reports it in one line.

Each error says what was wrong, with which file or value, and what to do. Anything else that
escapes is msrgan's own fault: the command line says so (exit status 1).
"""
from __future__ import annotations


class UserError(Exception):
    """A bad file, value, argument or environment the user can mend; exit status 2 on the command line."""
