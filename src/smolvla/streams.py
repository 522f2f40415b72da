"""Every random stream of a run, in one table, and the seed of batch k of a stream.

Randomness that must survive a resume, a different process count or a cache rebuild is never drawn from a global
generator: each consumer seeds a fresh generator with `batch_seed(seed, index, stream)`. Two consumers sharing a
stream id would draw correlated noise, so the ids live here and nowhere else.
"""

import numpy as np

TRAIN = 0  # flow-matching noise and times of training batch k
VALIDATION = 1  # the validation loss's fixed sample and noise
PAIR_NOISE = 2  # reflow pair cache: the noise X0 the teacher is solved from
PAIR_DRAW = 3  # reflow pair cache: which of a frame's P cached pairs batch k uses
MEASURE = 4  # reflow measurements: the noise shared by every policy compared
AUGMENT = 5  # image augmentation of the sample at position k of the training stream


def batch_seed(seed: int, index: int, stream: int = TRAIN) -> int:
    """A well-mixed 63-bit seed for batch `index` of `stream`."""
    return int(np.random.SeedSequence([seed, stream, index]).generate_state(2, np.uint64)[0] >> np.uint64(1))
