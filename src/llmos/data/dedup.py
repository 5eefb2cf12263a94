"""Deduplication: exact (sha256 of the text) and near (MinHash + banded LSH), keep-first.

Deduplication needs every document, so it runs in two halves. While documents stream
through the workers, ``Signer`` computes each one's fingerprints: a 16-byte content key,
and for near-duplicates ``bands`` 64-bit LSH band keys. Only these fixed-size numbers are
kept in memory (about 200 bytes per document), never the texts. When the stream ends,
``resolve`` finds the clusters: documents sharing a content key, or sharing any band key
(then joined transitively), and keeps the first document of each cluster.

The MinHash signature is *one-permutation hashing with densification* (Li, Owen & Zhang
2012; Shrivastava 2017): every shingle is hashed once and the hash space is split into
``num_perm`` bins, each bin keeping its minimum, and empty bins borrow from their
neighbour. It estimates Jaccard similarity like classic k-permutation MinHash at a
``num_perm``-th of the cost, and is computed for a whole batch of documents with numpy.
Shingles are ``ngram`` consecutive tokens of the lower-cased text, where a token is a run of
ASCII letters and digits, or any single non-ASCII character (so Chinese is shingled by
character without a segmenter).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from pydantic import Field, model_validator

from llmos.data.steps import Step, StepParams

_U32 = np.uint64(0xFFFFFFFF)
_BASE = 0x100000001B3  # odd: invertible modulo 2**64
_INV_BASE = pow(_BASE, -1, 1 << 64)

# Byte classes: 0 separator (ASCII, not alphanumeric), 1 ASCII alphanumeric,
# 2 first byte of a multi-byte character, 3 continuation byte.
_CLASS = np.zeros(256, np.uint8)
for _b in range(256):
    if _b < 128:
        _CLASS[_b] = 1 if chr(_b).isalnum() else 0
    else:
        _CLASS[_b] = 3 if _b < 0xC0 else 2


def content_key(text: str) -> bytes:
    """The exact-duplicate key of a text (first 16 bytes of its sha256)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()[:16]


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """Bands and rows per band that best separate pairs above ``threshold`` from those
    below: minimise the probability mass of false positives plus false negatives
    (the S-curve 1 - (1 - s**rows)**bands against the step at ``threshold``)."""
    best, best_err = (1, num_perm), float("inf")
    s_low = np.linspace(0, threshold, 200)
    s_high = np.linspace(threshold, 1, 200)
    for bands in range(1, num_perm + 1):
        rows = num_perm // bands
        fp = np.trapezoid(1 - (1 - s_low ** rows) ** bands, s_low)
        fn = np.trapezoid((1 - s_high ** rows) ** bands, s_high)
        if fp + fn < best_err:
            best, best_err = (bands, rows), fp + fn
    return best


@dataclass
class Fingerprints:
    """Per-document keys for one batch."""

    content: np.ndarray  # (n, 2) uint64: the 16-byte content key
    bands: np.ndarray | None  # (n, bands) uint64, or None without near_dedup


class Signer:
    """Computes the fingerprints of batches of texts (runs in the workers)."""

    def __init__(self, near: NearDedup.Params | None):
        self.near = near
        if near is None:
            return
        self.k = near.num_perm
        self.ngram = near.ngram
        self.bands, self.rows = ((near.bands, near.rows) if near.bands else
                                 lsh_params(near.threshold, near.num_perm))
        rng = np.random.default_rng(near.seed)
        self._salt = rng.integers(1, 1 << 63, dtype=np.uint64) | np.uint64(1)
        self._gram_mult = rng.integers(1, 1 << 63, self.ngram, dtype=np.uint64) | np.uint64(1)
        self._band_mult = rng.integers(1, 1 << 63, (self.bands, self.rows),
                                       dtype=np.uint64) | np.uint64(1)

    def fingerprints(self, texts: list[str]) -> Fingerprints:
        keys = np.frombuffer(b"".join(map(content_key, texts)), np.uint64).reshape(-1, 2)
        bands = None
        if self.near is not None:
            bands = self.band_keys(self.signatures(texts), keys)
        return Fingerprints(keys.copy(), bands)

    # -- MinHash -------------------------------------------------------------------------

    def signatures(self, texts: list[str]) -> np.ndarray:
        """(len(texts), num_perm) uint32 MinHash signatures; a row of all 0xFFFFFFFF for a
        text without a single token."""
        n_docs, k = len(texts), self.k
        shingles, doc = self._shingles(texts)
        sig = np.full(n_docs * k, 0xFFFFFFFF, np.uint64)
        if len(shingles):
            with np.errstate(over="ignore"):
                bins = ((shingles >> np.uint64(32)) * np.uint64(k)) >> np.uint64(32)
                packed = ((doc.astype(np.uint64) * np.uint64(k) + bins) << np.uint64(32)) | (
                    shingles & _U32)
            packed.sort()
            slot = packed >> np.uint64(32)
            first = np.ones(len(packed), bool)
            first[1:] = slot[1:] != slot[:-1]
            sig[slot[first].astype(np.int64)] = packed[first] & _U32
        sig = sig.reshape(n_docs, k)
        return _densify(sig).astype(np.uint32)

    def _shingles(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashes of every shingle of every text, and the text each belongs to."""
        encoded = [t.lower().encode("utf-8", "surrogatepass") for t in texts]
        lengths = np.fromiter(map(len, encoded), np.int64, len(encoded))
        buf = np.frombuffer(b" ".join(encoded), np.uint8)
        if not len(buf):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        doc_start = np.zeros(len(texts), np.int64)
        np.cumsum(lengths[:-1] + 1, out=doc_start[1:])
        cls = _CLASS[buf]
        nxt = np.empty_like(cls)
        nxt[:-1], nxt[-1] = cls[1:], 0
        prev = np.empty_like(cls)
        prev[1:], prev[0] = cls[:-1], 0
        starts = np.flatnonzero((cls == 2) | ((cls == 1) & (prev != 1)))
        continues = ((cls == 1) & (nxt == 1)) | ((cls >= 2) & (nxt == 3))
        ends = np.flatnonzero((cls != 0) & ~continues) + 1
        if not len(starts):
            return np.zeros(0, np.uint64), np.zeros(0, np.int64)
        # Token hashes: a polynomial hash of each token's bytes, from prefix sums.
        n = len(buf)
        with np.errstate(over="ignore"):
            powers = np.full(n, _BASE, np.uint64)
            powers[0] = 1
            np.cumprod(powers, out=powers)
            prefix = np.zeros(n + 1, np.uint64)
            np.cumsum(buf * powers, out=prefix[1:])
            del powers
            inv = np.full(n, _INV_BASE, np.uint64)
            inv[0] = 1
            np.cumprod(inv, out=inv)
            token = (prefix[ends] - prefix[starts]) * inv[starts]
            del prefix, inv
            token = _mix(token ^ self._salt)
        tok_doc = np.searchsorted(doc_start, starts, "right") - 1
        g = self.ngram
        m = len(token) - g + 1
        parts_h, parts_d = [], []
        if m > 0:
            same = tok_doc[:m] == tok_doc[g - 1:]
            h = np.zeros(m, np.uint64)
            with np.errstate(over="ignore"):
                for j in range(g):
                    h += token[j:j + m] * self._gram_mult[j]
            parts_h.append(h[same])
            parts_d.append(tok_doc[:m][same])
        # Texts with fewer than ``ngram`` tokens get one shingle: all their tokens.
        counts = np.bincount(tok_doc, minlength=len(texts))
        short = np.flatnonzero((counts > 0) & (counts < g))
        if len(short):
            first_tok = np.searchsorted(tok_doc, short)
            h = np.zeros(len(short), np.uint64)
            with np.errstate(over="ignore"):
                for j in range(g - 1):
                    take = j < counts[short]
                    h[take] += token[first_tok[take] + j] * self._gram_mult[j]
            parts_h.append(h)
            parts_d.append(short)
        with np.errstate(over="ignore"):
            return _mix(np.concatenate(parts_h)), np.concatenate(parts_d)

    def band_keys(self, sig: np.ndarray, content: np.ndarray) -> np.ndarray:
        """(n, bands) uint64: each band's rows folded into one key. A text without tokens
        gets keys from its content key, so it only matches an identical text."""
        n = len(sig)
        used = sig[:, : self.bands * self.rows].astype(np.uint64).reshape(n, self.bands,
                                                                          self.rows)
        with np.errstate(over="ignore"):
            keys = _mix((used * self._band_mult[None]).sum(axis=2, dtype=np.uint64))
            empty = (sig == 0xFFFFFFFF).all(axis=1)
            if empty.any():
                keys[empty] = _mix(content[empty, :1] ^ np.arange(
                    self.bands, dtype=np.uint64)[None])
        return keys


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole word."""
    x = x ^ (x >> np.uint64(30))
    x = x * np.uint64(0xBF58476D1CE4E5B9)
    x = x ^ (x >> np.uint64(27))
    x = x * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _densify(sig: np.ndarray) -> np.ndarray:
    """Fill each empty bin from the nearest non-empty bin to its right (circularly),
    offset by the distance, so that empty bins agree exactly when the sets agree."""
    empty = sig == 0xFFFFFFFF
    if not empty.any():
        return sig
    k = sig.shape[1]
    cols = np.arange(k)
    filled_any = ~empty.all(axis=1)
    pos = np.where(empty, 4 * k, cols[None, :])
    doubled = np.concatenate([pos, np.where(empty, 4 * k, cols[None, :] + k)], axis=1)
    nearest = np.minimum.accumulate(doubled[:, ::-1], axis=1)[:, ::-1][:, :k]
    nearest = np.where(filled_any[:, None], nearest, cols[None, :])
    source = nearest % k
    distance = (nearest - cols[None, :]).astype(np.uint64)
    with np.errstate(over="ignore"):
        borrowed = (np.take_along_axis(sig, source, axis=1)
                    + distance * np.uint64(0x9E3779B1)) & _U32
    out = np.where(empty & filled_any[:, None], borrowed, sig)
    return out


# -- resolution (main process, after the stream) ---------------------------------------------


@dataclass
class Clusters:
    """Documents removed by one dedup step, and the clusters they came from."""

    removed: np.ndarray  # bool (n,)
    keeper: np.ndarray  # int64 (n,): the index of the document kept for each document

    def groups(self, limit: int) -> tuple[int, list[tuple[int, list[int]]]]:
        """Number of clusters with duplicates, and up to ``limit`` of them as
        (kept index, removed indices)."""
        removed_idx = np.flatnonzero(self.removed)
        if not len(removed_idx):
            return 0, []
        keepers = self.keeper[removed_idx]
        order = np.argsort(keepers, kind="stable")
        keepers, removed_idx = keepers[order], removed_idx[order]
        bounds = np.flatnonzero(np.r_[True, keepers[1:] != keepers[:-1], True])
        out = []
        for a, b in zip(bounds[:-1][:limit], bounds[1:][:limit]):
            out.append((int(keepers[a]), removed_idx[a:b].tolist()))
        return len(bounds) - 1, out


def exact_clusters(content: np.ndarray, alive: np.ndarray) -> Clusters:
    """Among ``alive`` documents, those whose content key repeats an earlier one."""
    n = len(content)
    idx = np.flatnonzero(alive)
    keeper = np.arange(n)
    if len(idx):
        keys = np.ascontiguousarray(content[idx]).view([("a", np.uint64), ("b", np.uint64)])
        _, first, inverse = np.unique(keys.ravel(), return_index=True, return_inverse=True)
        keeper[idx] = idx[first[inverse.ravel()]]
    return Clusters(removed=keeper != np.arange(n), keeper=keeper)


def near_clusters(bands: np.ndarray, alive: np.ndarray) -> Clusters:
    """Among ``alive`` documents, connected components of "shares a band key"; every
    member but the first (lowest index) of a component is removed."""
    n = len(bands)
    idx = np.flatnonzero(alive)
    label = np.arange(n)
    src, dst = [], []
    for j in range(bands.shape[1]):
        col = bands[idx, j]
        order = np.argsort(col, kind="stable")
        sorted_keys = col[order]
        new_group = np.r_[True, sorted_keys[1:] != sorted_keys[:-1]]
        group_first = np.maximum.accumulate(np.where(new_group, np.arange(len(order)), 0))
        dup = ~new_group
        if dup.any():
            src.append(idx[order[group_first[dup]]])
            dst.append(idx[order[dup]])
    if src:
        a, b = np.concatenate(src), np.concatenate(dst)
        while True:  # label propagation to the smallest index, with pointer jumping
            low = np.minimum(label[a], label[b])
            before = label.copy()
            np.minimum.at(label, a, low)
            np.minimum.at(label, b, low)
            label = label[label]
            if np.array_equal(label, before):
                break
    return Clusters(removed=label != np.arange(n), keeper=label)


# -- the recipe steps ----------------------------------------------------------------------


class ExactDedup(Step):
    """Remove documents whose text is identical to an earlier one (sha256), keep the first."""

    name = "exact_dedup"
    phase = "dedup"
    once = True

    def clusters(self, content: np.ndarray, bands: np.ndarray | None,
                 alive: np.ndarray) -> Clusters:
        return exact_clusters(content, alive)


class NearDedup(Step):
    """Remove near-duplicates (MinHash over word n-gram shingles, banded LSH), keep the
    first of each cluster. ``threshold`` is the Jaccard similarity at which two documents
    count as duplicates."""

    name = "near_dedup"
    phase = "dedup"
    once = True

    class Params(StepParams):
        threshold: float = Field(0.8, gt=0, lt=1)
        num_perm: int = Field(128, ge=16, le=1024)
        ngram: int = Field(5, ge=1, le=20)
        seed: int = 1
        bands: int | None = Field(None, ge=1, description="LSH bands (default: derived from "
                                  "threshold)")
        rows: int | None = Field(None, ge=1, description="rows per band (with bands)")

        @model_validator(mode="after")
        def _banding(self):
            if (self.bands is None) != (self.rows is None):
                raise ValueError("give both bands and rows, or neither")
            if self.bands and self.bands * self.rows > self.num_perm:
                raise ValueError(f"bands x rows must be at most num_perm ({self.num_perm})")
            return self

    def clusters(self, content: np.ndarray, bands: np.ndarray | None,
                 alive: np.ndarray) -> Clusters:
        return near_clusters(bands, alive)
