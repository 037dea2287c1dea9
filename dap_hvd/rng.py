"""Every seeded random stream of a run, named in one place. Pure numpy.

A run draws nothing from a global generator: each random choice comes from a generator keyed by
the run's seed, the epoch (or pass) it belongs to and the stream's own tag. So a resumed run draws
exactly what the uninterrupted run drew, the checkpoint needs no RNG blob for them, and two
streams never share draws. The tags are part of the record: changing one changes every selection,
shard or augmentation of that stream, so old runs would no longer resume to the same result.

  name         keys            what it draws
  tie-break    seed, epoch     dap: the order among samples tied at the keep threshold after `epoch`
  random-keep  seed, epoch     random: the uniform keep at the drop after `epoch`
  infobatch    seed, epoch     infobatch: the prune coin flips of `epoch` (the epoch they train)
  rs2          seed, pass      rs2: the permutation of pass `pass` of its walk through the data
  seta         seed, epoch     seta: the random 1-r of the data drawn for `epoch`
  shard        seed, epoch     the permutation of the selection dealt across ranks in `epoch`
  augment      loader seed     DALI: every sample's crop, flip, jitter and lighting draws of an epoch

The loader seed is `rank_seed(seed, epoch, rank)`, which also seeds torch's own generator on each
rank at start (epoch 0): dropout masks must differ across ranks.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Stream(NamedTuple):
    tag: int  # appended to the keys: the stream's identity in the seed
    keys: tuple[str, ...]  # what the caller passes, in this order, before the tag


STREAMS: dict[str, Stream] = {
    "tie-break": Stream(0x71E, ("seed", "epoch")),
    "random-keep": Stream(0xD0, ("seed", "epoch")),
    "infobatch": Stream(0x1B, ("seed", "epoch")),
    "rs2": Stream(0x52, ("seed", "pass")),
    "seta": Stream(0x5E7A, ("seed", "epoch")),
    "shard": Stream(0x5EED, ("seed", "epoch")),
    "augment": Stream(0xDA11, ("loader seed",)),
}


def stream(name: str, *keys: int) -> np.random.Generator:
    """The generator of stream `name` for `keys` (STREAMS[name].keys, in that order): the same
    keys give the same draws in every process and every run."""
    spec = STREAMS[name]
    if len(keys) != len(spec.keys):
        raise TypeError(f"rng stream {name!r} takes {', '.join(spec.keys)}; got {len(keys)} key(s)")
    return np.random.default_rng([*keys, spec.tag])


def rank_seed(seed: int, epoch: int, rank: int) -> int:
    """A 31-bit seed for (seed, epoch, rank): a loader's augmentation seed for `epoch` (1-based),
    and torch's generator on `rank` at start (epoch 0). A resumed run replays both."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] % (2**31 - 1))
