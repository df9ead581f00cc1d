"""The one error type of the annotation store; its message is written for the person using the app."""
from __future__ import annotations


class StorageError(RuntimeError):
    """A storage problem; the message is shown to users as is."""
