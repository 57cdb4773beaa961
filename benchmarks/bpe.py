"""BPE figures on Tiny Shakespeare: training time for vocabularies of 512 and 1024,
encode/decode throughput, and the encode rate of one long word (1,000,000 letters, no
space: a single pre-split chunk) next to the rate on ordinary text. Compare only figures
from one run: these machines are noisy.

    python benchmarks/bpe.py            # the incremental trainer, encode, decode, one long word
    python benchmarks/bpe.py --naive    # also the recount-every-merge trainer, side by side
"""
import argparse
import platform
import random
import string
import time
from collections import Counter

import regex
import torch

from minillm.corpus import tiny_shakespeare
from minillm.tokenizer import GPT2_SPLIT_PATTERN, BPETokenizer, merge


def recount_trainer(text: str, vocab_size: int) -> list:
    """The textbook trainer: count every pair of the whole text again after each merge."""
    words = [list(c.encode("utf-8")) for c in regex.findall(GPT2_SPLIT_PATTERN, text)]
    merges = []
    for new_id in range(256, vocab_size):
        counts = Counter()
        for w in words:
            counts.update(zip(w, w[1:]))
        best = max(counts, key=lambda p: (counts[p], -p[0], -p[1]))
        merges.append(best)
        words = [merge(w, best, new_id) for w in words]
    return merges


def seconds(fn, repeat=3):
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--naive", action="store_true", help="also time the recount-every-merge trainer (slow)")
    args = parser.parse_args()
    text = tiny_shakespeare()
    mb = len(text.encode("utf-8")) / 1e6
    print(f"Tiny Shakespeare, {mb:.2f} MB; {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} threads, Python {platform.python_version()}")
    for vocab in (512, 1024):
        t, tok = seconds(lambda: BPETokenizer().train(text, vocab))
        print(f"train vocab {vocab:5d} (incremental counts): {t:6.2f} s")
    if args.naive:
        t_naive, merges = seconds(lambda: recount_trainer(text, 512), repeat=1)
        t_fast, fast = seconds(lambda: BPETokenizer().train(text, 512), repeat=1)
        assert merges == list(fast.merges), "the two trainers disagree"
        print(f"train vocab   512 (recount every merge): {t_naive:6.2f} s, {t_naive / t_fast:.0f}x slower than incremental")
    cold, ids = seconds(lambda: BPETokenizer(list(tok.merges)).encode(text))     # a new tokenizer: empty chunk cache
    warm, _ = seconds(lambda: tok.encode(text))
    dec, out = seconds(lambda: tok.decode(ids))
    assert out == text
    print(f"encode (vocab 1024): {mb / cold:6.2f} MB/s first pass, {mb / warm:6.2f} MB/s with the chunk cache warm; "
          f"{len(ids):,} tokens, {len(text) / len(ids):.2f} characters per token")
    print(f"decode (vocab 1024): {mb / dec:6.2f} MB/s")
    # One word of a million letters is one chunk of the pre-split. Ordinary text is the rate to
    # compare with: the first pass over Tiny Shakespeare above (a new tokenizer, so its cache fills
    # as it goes), and every distinct chunk of it merged once (no cache hits: random letters get none).
    distinct = set(regex.findall(GPT2_SPLIT_PATTERN, text))
    distinct_mb = sum(len(c.encode("utf-8")) for c in distinct) / 1e6
    def merge_each_once():
        fresh = BPETokenizer(list(tok.merges))
        return [fresh._encode_chunk(c) for c in distinct]
    once, _ = seconds(merge_each_once)
    print(f"ordinary text (vocab 1024): {mb / cold:6.2f} MB/s first pass; its {len(distinct):,} distinct chunks, "
          f"each merged once: {distinct_mb / once:6.2f} MB/s")
    rng = random.Random(0)
    words = {"'a' x 1,000,000": "a" * 1_000_000,
             "1,000,000 random letters": "".join(rng.choices(string.ascii_lowercase, k=1_000_000))}
    for name, word in words.items():
        t, ids = seconds(lambda w=word: BPETokenizer(list(tok.merges)).encode(w), repeat=1)
        assert tok.decode(ids) == word
        print(f"encode one long word, {name}: {len(word) / t / 1e6:6.2f} MB/s (ordinary text: {mb / cold:.2f} "
              f"first pass, {distinct_mb / once:.2f} each chunk once); {t:6.2f} s, {len(ids):,} tokens")


if __name__ == "__main__":
    main()
