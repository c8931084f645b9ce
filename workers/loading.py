"""Loading weights quietly: transformers draws a progress bar per model load, which is noise in a server's log or a
library user's program (the CLI turns them off for the whole run; this covers the Python API)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def quiet_loading() -> Iterator[None]:
    """transformers' progress bars off while this project loads a model; the caller's setting comes back after."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
