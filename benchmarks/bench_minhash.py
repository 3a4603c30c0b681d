"""Vectorised MinHash (annotate/minhash.py) against datasketch on the same IPA shingles.

    .venv/bin/python benchmarks/bench_minhash.py [--docs 2000] [--num-perm 128]

Documents are lyrics phonemized by espeak-ng (about 600 IPA characters each, like a song).
Baselines, measured in the same run on the same shingles:
  - datasketch `MinHash().update_batch(shingles)` per document (default scheme, SHA-1 hash);
  - the same with our shingle hash as `hashfunc` (the configuration whose hash values ours
    reproduce bit for bit, checked here on every document);
  - datasketch `update` shingle by shingle (a subset: it is slow);
and the `legacy` scheme (datasketch < 2.0 sketches) both ways.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.minhash import MinHasher, shingle_hash32, shingles  # noqa: E402
from songmill.annotate.phonemes import phoneme_key, to_ipa_batch  # noqa: E402
from songmill.testaudio.sung import generate_lyrics  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--num-perm", type=int, default=128)
    parser.add_argument("--shingle", type=int, default=4)
    args = parser.parse_args()
    from datasketch import MinHash

    texts = generate_lyrics(args.docs, seed=0, lines=(24, 32))
    start = time.perf_counter()
    ipa = [phoneme_key(s) for s in to_ipa_batch(texts, "en")]
    print(
        f"{len(ipa)} lyrics phonemized in {time.perf_counter() - start:.1f} s; IPA length median {int(np.median([len(s) for s in ipa]))} chars"
    )
    k, num_perm = args.shingle, args.num_perm
    shingle_lists = [shingles(s, k) for s in ipa]
    encoded = [[s.encode() for s in sh] for sh in shingle_lists]
    print(f"shingles per document: median {int(np.median([len(s) for s in shingle_lists]))}")

    results = {}
    for scheme in ("affine32", "legacy"):
        hasher = MinHasher(num_perm, 1, scheme)
        hasher.signatures(ipa[:10], k)  # warm: permutations
        ours_s = best_of(3, lambda hasher=hasher: hasher.signatures(ipa, k))
        ours = hasher.signatures(ipa, k)

        def sha1_batch(scheme=scheme):
            for sh in encoded:
                MinHash(num_perm=num_perm, seed=1, scheme=scheme).update_batch(sh)

        def same_hash_batch(scheme=scheme):
            out = []
            for sh in shingle_lists:
                m = MinHash(num_perm=num_perm, seed=1, scheme=scheme, hashfunc=shingle_hash32)
                m.update_batch(sh)
                out.append(m.hashvalues)
            return out

        sha1_s = best_of(1, sha1_batch)
        start = time.perf_counter()
        reference = same_hash_batch()
        same_s = time.perf_counter() - start
        identical = all(np.array_equal(a, b) for a, b in zip(ours, reference, strict=True))
        subset = encoded[: max(1, len(encoded) // 10)]

        def one_by_one(scheme=scheme, subset=subset):
            for sh in subset:
                m = MinHash(num_perm=num_perm, seed=1, scheme=scheme)
                for s in sh:
                    m.update(s)

        single_s = best_of(1, one_by_one) * len(encoded) / len(subset)
        n = len(ipa)
        results[scheme] = (ours_s, sha1_s, same_s, single_s, identical)
        print(f"\nscheme {scheme} ({num_perm} permutations, {k}-char shingles, {n} documents)")
        print(f"  vectorised (numpy, incl. shingling)     {n / ours_s:10.0f} docs/s")
        print(
            f"  datasketch update_batch, SHA-1          {n / sha1_s:10.0f} docs/s   -> ratio {sha1_s / ours_s:6.1f}x"
        )
        print(
            f"  datasketch update_batch, same hashfunc  {n / same_s:10.0f} docs/s   -> ratio {same_s / ours_s:6.1f}x  (hash values identical: {identical})"
        )
        print(
            f"  datasketch update one by one, SHA-1     {n / single_s:10.0f} docs/s   -> ratio {single_s / ours_s:6.1f}x"
        )

    # Jaccard estimates against datasketch's own (SHA-1) sketches on related pairs.
    hasher = MinHasher(num_perm, 1)
    pairs = [
        (ipa[i], ipa[i][: len(ipa[i]) // 2] + ipa[i + 1][len(ipa[i + 1]) // 2 :])
        for i in range(0, 200, 2)
    ]
    ours = hasher.signatures([x for p in pairs for x in p], k)
    diffs = []
    for j, (a, b) in enumerate(pairs):
        ma, mb = MinHash(num_perm=num_perm), MinHash(num_perm=num_perm)
        ma.update_batch([s.encode() for s in shingles(a, k)])
        mb.update_batch([s.encode() for s in shingles(b, k)])
        exact = len(set(shingles(a, k)) & set(shingles(b, k))) / len(
            set(shingles(a, k)) | set(shingles(b, k))
        )
        diffs.append(
            (
                hasher.jaccard_estimates(ours[2 * j], ours[2 * j + 1 : 2 * j + 2])[0],
                ma.jaccard(mb),
                exact,
            )
        )
    d = np.array(diffs)
    print(f"\nJaccard estimates on {len(pairs)} half-shared pairs: mean |ours - exact| {np.abs(d[:, 0] - d[:, 2]).mean():.3f}, "
          f"mean |datasketch(SHA-1) - exact| {np.abs(d[:, 1] - d[:, 2]).mean():.3f}, mean |ours - datasketch| {np.abs(d[:, 0] - d[:, 1]).mean():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
