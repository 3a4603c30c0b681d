"""Vectorised MinHash: bit-identical to datasketch for the same shingles, seed and num_perm."""

from __future__ import annotations

import numpy as np
import pytest
from datasketch import LeanMinHash, MinHash, MinHashLSH
from datasketch.hashfunc import sha1_hash32
from songmill.annotate.minhash import (
    MinHasher,
    batch_shingle_hashes,
    shingle_hash32,
    shingle_hashes,
    shingles,
)

ALPHABET = "abdefhijklmnopstuvwzæðŋɑɔəɛɪʊʃʒθʌɾ "


def random_texts(n: int, seed: int, max_len: int = 400) -> list[str]:
    rng = np.random.default_rng(seed)
    return [
        "".join(rng.choice(list(ALPHABET), size=int(rng.integers(0, max_len)))) for _ in range(n)
    ]


def datasketch_minhash(text: str, k: int, num_perm: int, seed: int, scheme: str) -> MinHash:
    m = MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash32, scheme=scheme)
    m.update_batch(shingles(text, k))
    return m


def test_shingle_hashes_match_the_scalar_hash():
    text = "ðə ɡoʊldən ɹɪvɚ"
    assert shingle_hashes(text, 4).tolist() == [shingle_hash32(s) for s in shingles(text, 4)]
    assert shingles("ab", 4) == ["ab"] and shingles("", 4) == []


def test_batch_hashing_drops_windows_across_texts():
    texts = ["abcdef", "", "xy", "klmn", "pqrstu"]
    hashes, counts = batch_shingle_hashes(texts, 4)
    assert counts.tolist() == [3, 0, 1, 1, 3]
    expected = [shingle_hash32(s) for t in texts for s in shingles(t, 4)]
    assert hashes.tolist() == expected


@pytest.mark.parametrize("scheme", ["affine32", "legacy"])
@pytest.mark.parametrize("num_perm,seed,k", [(128, 1, 4), (64, 7, 5), (256, 42, 3)])
def test_signatures_equal_datasketch(scheme, num_perm, seed, k):
    texts = random_texts(60, seed) + ["", "ab", "abc", "abcd", "aaaaaaaaaaaa"]
    signatures = MinHasher(num_perm, seed, scheme).signatures(texts, k)
    for text, signature in zip(texts, signatures, strict=True):
        expected = datasketch_minhash(text, k, num_perm, seed, scheme)
        np.testing.assert_array_equal(signature, expected.hashvalues)
        assert signature.dtype == expected.hashvalues.dtype


def test_large_batches_are_chunked_without_changing_results(monkeypatch):
    import songmill.annotate.minhash as minhash

    texts = random_texts(50, 3, max_len=800)
    whole = MinHasher().signatures(texts, 4)
    monkeypatch.setattr(minhash, "_CHUNK_ELEMENTS", 128 * 300)  # a few documents per chunk
    np.testing.assert_array_equal(MinHasher().signatures(texts, 4), whole)


def test_any_precomputed_hashes_work_too():
    """With sha1-hashed shingles (datasketch's default hash), the default MinHash agrees."""
    texts = random_texts(20, 5)
    hashes = [
        np.array([sha1_hash32(s.encode()) for s in shingles(t, 4)], dtype=np.uint32) for t in texts
    ]
    signatures = MinHasher().signatures_from_hashes(
        np.concatenate(hashes), [h.size for h in hashes]
    )
    for text, signature in zip(texts, signatures, strict=True):
        m = MinHash(num_perm=128, seed=1)
        m.update_batch([s.encode() for s in shingles(text, 4)])
        np.testing.assert_array_equal(signature, m.hashvalues)


def test_lean_and_full_objects_interoperate_with_datasketch():
    a, b = "ðə ɡoʊldən ɹɪvɚ ɹʌnz θɹu ðə kwaɪət sɪɾi", "ðə ɡoʊldən ɹɪvɚ ɹʌnz θɹu ðə bɪɡ sɪɾi"
    hasher = MinHasher()
    sig = hasher.signatures([a, b], 4)
    lean_a, full_b = hasher.lean(sig[0]), hasher.minhash(sig[1])
    ours = lean_a.jaccard(full_b)
    theirs = datasketch_minhash(a, 4, 128, 1, "affine32").jaccard(
        datasketch_minhash(b, 4, 128, 1, "affine32")
    )
    assert ours == theirs == pytest.approx(hasher.jaccard_estimates(sig[0], sig[1:])[0])
    exact = len(set(shingles(a, 4)) & set(shingles(b, 4))) / len(
        set(shingles(a, 4)) | set(shingles(b, 4))
    )
    assert abs(ours - exact) < 0.15
    full_b.update("ɹɪv")  # a real MinHash: it keeps the permutations and the hash function
    assert isinstance(LeanMinHash(full_b), LeanMinHash)
    lsh = MinHashLSH(threshold=0.5, num_perm=128)
    lsh.insert("a", lean_a)
    assert lsh.query(datasketch_minhash(a, 4, 128, 1, "affine32")) == ["a"]


def test_estimates_track_exact_jaccard():
    rng = np.random.default_rng(0)
    base = "".join(rng.choice(list(ALPHABET[:-1]), size=600))
    variants = [base[: 600 - cut] + base[:cut] for cut in (0, 60, 150, 300, 450)]
    hasher = MinHasher(num_perm=256)
    sigs = hasher.signatures([base, *variants], 5)
    estimates = hasher.jaccard_estimates(sigs[0], sigs[1:])
    exact = [
        len(set(shingles(base, 5)) & set(shingles(v, 5)))
        / len(set(shingles(base, 5)) | set(shingles(v, 5)))
        for v in variants
    ]
    assert np.max(np.abs(estimates - np.array(exact))) < 0.1
