"""A bounded LRU of backbone KV caches for voice reference segments.

The voice segment (reference clip + transcript) opens every prompt, so its key/value states are the same on
every call: computing them once saves most of the prefill (a 30 s clip is ~400 positions).

Entries are immutable snapshots: `restore()` builds a fresh `DynamicCache` whose layers are new tensors
(`DynamicLayer.update` concatenates onto an empty tensor, which copies), so a call appending its own positions
never touches the stored entry.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import DynamicCache, PreTrainedConfig


@dataclass(frozen=True)
class PrefixEntry:
    layers: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per layer (keys, values): [1, kv_heads, L, head_dim]
    positions: int


def snapshot(cache: DynamicCache) -> PrefixEntry:
    layers = tuple((layer.keys.clone(), layer.values.clone()) for layer in cache.layers)
    return PrefixEntry(layers=layers, positions=cache.get_seq_length())


def restore(entry: PrefixEntry, config: PreTrainedConfig) -> DynamicCache:
    """A new cache holding copies of the entry's tensors (safe to extend)."""
    return DynamicCache(ddp_cache_data=entry.layers, config=config)


def content_key(speaker: int, text: str, codes: torch.Tensor) -> str:
    """Hash of what determines the prefix: a stale caller key with different audio or text can't hit."""
    digest = hashlib.sha1()
    digest.update(f"{speaker}\x00{text}\x00{tuple(codes.shape)}\x00".encode())
    digest.update(codes.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())
    return digest.hexdigest()


class PrefixCache:
    """Thread-safe LRU: key -> PrefixEntry, at most `max_entries` kept."""

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self._entries: OrderedDict[str, PrefixEntry] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> PrefixEntry | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return entry

    def put(self, key: str, entry: PrefixEntry) -> None:
        if self.max_entries <= 0:
            return
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def discard_prefix(self, prefix: str) -> int:
        """Drop every entry whose key starts with `prefix` (a deleted voice); returns how many."""
        with self._lock:
            doomed = [key for key in self._entries if key.startswith(prefix)]
            for key in doomed:
                del self._entries[key]
            return len(doomed)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries
