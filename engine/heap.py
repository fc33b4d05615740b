"""Keeping the garbage collector's full passes short in a long-running bot.

A full (generation 2) collection walks every tracked object. With PyTorch, transformers and the models loaded that
is millions of objects: about 170 ms on this project's test machine, during which the event loop, and with it
every chat's audio and messages, stands still. Objects alive after start-up and after a model has loaded live as
long as the process; `gc.freeze()` moves them out of the collector's way, so later full passes walk only what
turns create.
"""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_long_lived() -> None:
    """Collect once, then exempt everything alive now from future collections (start-up, after a model loads)."""
    gc.collect()
    gc.freeze()
    log.debug("%d long-lived objects frozen out of the garbage collector's way", gc.get_freeze_count())
