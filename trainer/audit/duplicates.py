"""Which images are copies of each other: exact duplicates by hash, near-duplicates by embedding
similarity, within a split and across splits, joined into groups.

Exact: the same bytes, or the same decoded pixels (a PNG saved twice). Near: cosine similarity
>= `threshold` of the embeddings after `whiten` (centered, PCA to WHITEN_DIMS dimensions, each
scaled to unit variance with shrinkage), found with blocked matrix products (`chunk` x `chunk`
similarities at a time: memory O(chunk^2), never N x N).

Why whitened: a backbone's pooled features (after ReLU) are all positive and share a large common
part, so raw cosine similarities of unrelated images crowd near 1 and a fixed threshold means
little. Centering removes the common part, whitening stops a few dominant directions (class
identity, mostly) from making every image of a class look alike, as in image retrieval (Jegou and
Chum, ECCV 2012). Measured on tests/integration/test_audit.py's folder (a ResNet-18 trained 2
epochs on it, 192 images): raw cosine put planted near-copies at 0.87-1.0 but unrelated pairs up
to 0.92 (no threshold separates them); whitened, the planted pairs score 0.75-1.0 and the most
similar unrelated pair 0.66.

NEAR_THRESHOLD = 0.70 is calibrated there: planted pairs (JPEG quality 60, resized by 10%, cropped
by 5%, brightness +10%; 16 near and 5 exact) against every unrelated pair of the folder: all 21
found, no unrelated pair above it. A stronger backbone (pretrained) separates the two further; a
weaker one pushes unrelated pairs up: look at the lowest-scoring pairs of duplicates.csv and raise
--threshold if they are not copies.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

NEAR_THRESHOLD = 0.70
MAX_PAIRS = 500_000  # near pairs kept, the most similar: a bound on memory, not a finding
WHITEN_DIMS = 64  # directions kept; also what makes the search fast on 100k images


def whiten(emb: np.ndarray, dims: int = WHITEN_DIMS) -> np.ndarray:
    """(N, <= dims) float32: `emb` centered, projected on its top principal directions, each
    scaled by 1 / sqrt(variance + mean variance) (shrinkage: weak directions, mostly noise, are
    not blown up), L2-normalized. Deterministic for given rows (eigh of the D x D covariance)."""
    x = emb.astype(np.float64) - emb.mean(axis=0, dtype=np.float64)
    cov = x.T @ x / max(1, len(x))
    values, vectors = np.linalg.eigh(cov)  # ascending
    k = max(1, min(dims, len(x) - 1, emb.shape[1]))
    values, vectors = values[::-1][:k], vectors[:, ::-1][:, :k]
    vectors = vectors * np.sign(vectors[np.abs(vectors).argmax(axis=0), range(k)])  # fixed signs
    out = (x @ vectors) / np.sqrt(np.maximum(values, 0) + values.mean() + 1e-12)
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def exact_groups(hashes: list[tuple[str, str]]) -> list[list[int]]:
    """Rows with the same bytes hash or the same pixels hash, as groups of >= 2 rows (sorted)."""
    sets = UnionFind(len(hashes))
    for key in (0, 1):
        first: dict[str, int] = {}
        for row, h in enumerate(hashes):
            sets.union(first.setdefault(h[key], row), row)
    return sets.groups()


def near_pairs(
    emb: np.ndarray,
    threshold: float = NEAR_THRESHOLD,
    chunk: int = 4096,
    max_pairs: int = MAX_PAIRS,
) -> list[tuple[int, int, float]]:
    """(i, j, similarity) with i < j for every pair of rows of the L2-normalized `emb` whose
    cosine similarity is >= threshold, most similar first; only the `max_pairs` most similar
    when there are more (a backbone that cannot tell a class's images apart calls them all
    copies: the caller says so when the list is that long)."""
    n = len(emb)
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    found: list[np.ndarray] = []  # (k, 3) float64 blocks of [i, j, similarity]
    kept = 0
    for a in range(0, n, chunk):
        block = emb[a : a + chunk]
        for b in range(a, n, chunk):
            sims = block @ emb[b : b + chunk].T
            if a == b:  # the diagonal block: each pair once, not an image with itself
                sims = np.triu(sims, k=1) - np.tril(np.ones_like(sims))
            i, j = np.nonzero(sims >= threshold)
            found.append(np.stack([i + a, j + b, sims[i, j]], axis=1).astype(np.float64))
            kept += len(i)
            if kept > 2 * max_pairs:
                found, kept = [_most_similar(np.concatenate(found), max_pairs)], max_pairs
    pairs = _most_similar(np.concatenate(found) if found else np.zeros((0, 3)), max_pairs)
    order = np.lexsort((pairs[:, 1], pairs[:, 0], -pairs[:, 2]))
    return [(int(i), int(j), float(s)) for i, j, s in pairs[order]]


def _most_similar(pairs: np.ndarray, k: int) -> np.ndarray:
    if len(pairs) <= k:
        return pairs
    return pairs[np.argpartition(-pairs[:, 2], k - 1)[:k]]


class UnionFind:
    """Disjoint sets of rows 0..n-1 (path halving)."""

    def __init__(self, n: int):
        self.parent = list(range(n))

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, x: int, y: int) -> None:
        rx, ry = self.find(x), self.find(y)
        if rx != ry:
            self.parent[max(rx, ry)] = min(rx, ry)

    def groups(self) -> list[list[int]]:
        """Sets of >= 2 rows, each sorted, ordered by their first row."""
        members: dict[int, list[int]] = defaultdict(list)
        for x in range(len(self.parent)):
            members[self.find(x)].append(x)
        return sorted((m for m in members.values() if len(m) >= 2), key=lambda m: m[0])


def all_pairs(
    exact: list[list[int]], near: list[tuple[int, int, float]], splits: list[str]
) -> list[dict]:
    """One row per duplicate pair: each exact group as (first, other) pairs with similarity 1,
    then the near pairs not already inside an exact group. Cross-split pairs first."""
    in_exact = {row: g[0] for g in exact for row in g}
    rows = [
        {"a": g[0], "b": other, "similarity": 1.0, "kind": "exact"}
        for g in exact
        for other in g[1:]
    ]
    for i, j, sim in near:
        if i in in_exact and in_exact.get(j) == in_exact[i]:
            continue
        rows.append({"a": i, "b": j, "similarity": sim, "kind": "near"})
    for r in rows:
        r["splits"] = "same" if splits[r["a"]] == splits[r["b"]] else "cross"
    rows.sort(key=lambda r: (r["splits"] != "cross", -r["similarity"], r["a"], r["b"]))
    return rows


def groups_of(pairs: list[dict], n: int) -> list[list[int]]:
    """The duplicate groups: rows joined by any pair (exact or near), transitively."""
    sets = UnionFind(n)
    for p in pairs:
        sets.union(p["a"], p["b"])
    return sets.groups()


def leakage(pairs: list[dict], splits: list[str]) -> dict[str, int]:
    """How many images of val and of test have a copy (exact or near) in train, and how many
    test images have one in val: {"test_in_train": 37, ...}."""
    found: dict[str, set[int]] = defaultdict(set)
    for p in pairs:
        for x, y in ((p["a"], p["b"]), (p["b"], p["a"])):
            if (splits[x], splits[y]) in (("val", "train"), ("test", "train"), ("test", "val")):
                found[f"{splits[x]}_in_{splits[y]}"].add(x)
    return {k: len(found[k]) for k in ("val_in_train", "test_in_train", "test_in_val")}
