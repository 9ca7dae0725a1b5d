"""Exceptions shared by the command-line entry points."""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input; printed as one line, exit code 2."""


__all__ = ["UserError"]
