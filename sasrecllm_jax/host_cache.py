"""Host-side inputs that the runs of one process share (the experiment grid runs every method in one):
dequantized backbone weights, tokenizers and encoded splits, keyed by everything that shapes them.
Host arrays only: device copies are made per run, because the train step donates its inputs."""
from __future__ import annotations

import dataclasses
from typing import Callable


@dataclasses.dataclass
class HostCache:
    items: dict = dataclasses.field(default_factory=dict)

    def get(self, key: tuple, make: Callable):
        if key not in self.items:
            self.items[key] = make()
        return self.items[key]


def memo(cache: HostCache | None, key: tuple, make: Callable):
    """make(), shared through `cache` when there is one."""
    return cache.get(key, make) if cache is not None else make()
