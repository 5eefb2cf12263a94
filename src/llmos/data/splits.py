"""Train/validation/test assignment: deterministic by seed, stratified by label.

Each document's place is decided by a hash of its content key and the seed, so the same
document lands in the same split whatever order the files were read in. Within each label
(or among all documents, without a label column) documents are ranked by that hash and
the first ``round(n * train)`` go to train, the next ``round(n * validation)`` to
validation, the rest to test: the proportions hold exactly in every class.
"""

from __future__ import annotations

import numpy as np

SPLITS = ("train", "validation", "test")


def assign(content: np.ndarray, labels: np.ndarray, fractions: dict[str, float],
           seed: int) -> np.ndarray:
    """Split codes (0 train, 1 validation, 2 test) for documents with content keys
    ``content`` ((n, 2) uint64) and integer ``labels`` ((n,), one code per class)."""
    n = len(content)
    out = np.zeros(n, np.int8)
    with np.errstate(over="ignore"):
        rank_key = content[:, 0] ^ (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15))
        rank_key = rank_key * np.uint64(0xBF58476D1CE4E5B9)
        rank_key ^= rank_key >> np.uint64(31)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        members = members[np.lexsort((content[members, 1], rank_key[members]))]
        k = len(members)
        # Cumulative boundaries, so an empty split stays empty whatever the rounding.
        b2 = k if fractions["test"] == 0 else round(k * (fractions["train"]
                                                         + fractions["validation"]))
        b1 = b2 if fractions["validation"] == 0 else min(b2, round(k * fractions["train"]))
        out[members[b1:b2]] = 1
        out[members[b2:]] = 2
    return out
