"""TEMP (#24 story): the policy branch's rng.py wins."""
import numpy as np


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0] % (2**31 - 1))
