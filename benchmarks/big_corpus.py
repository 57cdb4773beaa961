"""A corpus bigger than memory (lesson 20, section 14): peak memory and encode time of the old
in-memory path against the token file. Prints a table; asserts nothing about time or memory.

    python benchmarks/big_corpus.py [--sizes 50,200] [--old-sizes 50,200] [--workers 2] [--steps 20] [--keep DIR]

It writes a generated text (not one text repeated, which would flatter the BPE encoder's chunk
cache: words drawn at random from Tiny Shakespeare's word frequencies, in lines whose lengths
are drawn from its lines, with its share of blank lines; seeded) to a temporary folder, removed
at the end (--keep DIR writes it there and keeps it, with the token files). Then, each in a
process of its own, so that ru_maxrss is that measurement's peak:

    old  the path `python -m minillm train` took before the token file: the whole text read and
         decoded, its SHA-256, the tokenizer (CharTokenizer(text), or BPE trained on all of it),
         tokenizer.encode(text) as a Python list, then an int64 tensor, then the split;
    new  scan_text (one streaming pass: SHA-256, characters), the tokenizer (CharTokenizer of the
         characters, or train_bpe on the first 32 MB), token_file with --workers processes,
         the split of the memmap, then --steps training steps of the CPU preset's model on it;
    reuse  the same, when the token file is already there (found and checked, not encoded).

Peak memory is the process's own ru_maxrss; the encoding workers' peak (the largest of them)
is reported apart. The memmap's pages that training touches are file-backed and count in
ru_maxrss too; the operating system can drop them at any time. Use OMP_NUM_THREADS=1.
"""
import argparse
import collections
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def generate(path: Path, megabytes: float, seed: int = 0) -> None:
    """A text of `megabytes` MB (10**6 bytes) in Tiny Shakespeare's words and line lengths."""
    import numpy as np

    from minillm.corpus import tiny_shakespeare

    text = tiny_shakespeare()
    lines = text.split("\n")
    counts = collections.Counter(word for line in lines for word in line.split())
    words = np.array(list(counts), dtype=object)
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()
    lengths = np.array([len(line.split()) for line in lines])           # 0: a blank line
    rng = np.random.default_rng(seed)
    target, written = int(megabytes * 10**6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            n_lines = rng.choice(lengths, size=20_000)
            drawn = iter(words[rng.choice(len(words), size=int(n_lines.sum()), p=p)])
            block = "\n".join(" ".join(next(drawn) for _ in range(n)) for n in n_lines) + "\n"
            block = block.encode("utf-8")[: target - written].decode("utf-8", errors="ignore")
            f.write(block)
            written += len(block.encode("utf-8"))


def peak_mb(who=resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024                       # ru_maxrss is in KiB on Linux


def child_old(path: Path, tokenizer: str) -> dict:
    import hashlib

    import torch

    from minillm.corpus import train_val_split
    from minillm.tokenizer import BPETokenizer, CharTokenizer

    t0 = time.perf_counter()
    text = path.read_bytes().decode("utf-8")
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    t1 = time.perf_counter()
    tok = CharTokenizer(text) if tokenizer == "char" else BPETokenizer().train(text, 512)
    t2 = time.perf_counter()
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    train, val = train_val_split(ids, 0.1)
    t3 = time.perf_counter()
    return {"read_s": t1 - t0, "tokenizer_s": t2 - t1, "encode_s": t3 - t2, "tokens": len(ids), "sha": digest[:12]}


def child_new(path: Path, tokenizer: str, folder: Path, workers: int, steps: int) -> dict:
    import dataclasses

    import torch

    from minillm.corpus import train_val_split
    from minillm.model import GPT
    from minillm.tokenizer import CharTokenizer
    from minillm.training import Trainer, preset, scan_text, token_file, token_file_path, train_bpe

    t0 = time.perf_counter()
    scan = scan_text(path)
    t1 = time.perf_counter()
    tok = CharTokenizer(scan.chars) if tokenizer == "char" else train_bpe(path, 512)
    t2 = time.perf_counter()
    existed = token_file_path(folder, scan.sha256, tok).exists()
    ids = token_file(path, tok, folder, scan.sha256, workers=workers, verbose=False)
    train, val = train_val_split(ids, 0.1)
    t3 = time.perf_counter()
    out = {"read_s": t1 - t0, "tokenizer_s": t2 - t1, "encode_s": t3 - t2, "tokens": len(ids), "sha": scan.sha256[:12],
           "reused": existed, "file_mb": token_file_path(folder, scan.sha256, tok).stat().st_size / 2**20,
           "peak_before_training_mb": peak_mb()}
    if steps:
        model_config, train_config = preset("cpu", tok.vocab_size)
        train_config = dataclasses.replace(train_config, max_steps=steps + 1, warmup_steps=1, eval_interval=10**6,
                                           sample_interval=0, eval_iters=1)
        torch.manual_seed(0)
        trainer = Trainer(GPT(model_config), train, val, train_config, device="cpu", verbose=False)
        trainer.train_step()                                          # the first step warms up
        t4 = time.perf_counter()
        for _ in range(steps):
            trainer.train_step()
        out["ms_per_step"] = (time.perf_counter() - t4) / steps * 1000
    return out


def measure(args: list) -> dict:
    """Run this script as a child with args; its JSON line, with its peak memory."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    done = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="50,200", help="sizes of the texts for the token-file path (MB, 10**6 bytes)")
    parser.add_argument("--old-sizes", default="50,200",
                        help="sizes for the old in-memory path (it needs some 20 bytes a character: mind the memory)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--steps", type=int, default=20, help="training steps from the memmap")
    parser.add_argument("--tokenizers", default="char,bpe")
    parser.add_argument("--keep", metavar="DIR", help="write the texts and token files here and keep them")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, path, tokenizer, *rest = args.child
        import importlib

        import torch
        importlib.import_module("minillm.training")         # the imports' memory is the baseline, not the text's
        torch.set_num_threads(1)
        base = peak_mb()
        if kind == "old":
            result = child_old(Path(path), tokenizer)
        else:
            result = child_new(Path(path), tokenizer, Path(rest[0]), int(rest[1]), int(rest[2]))
        result["peak_mb"], result["base_mb"] = peak_mb(), base
        result["workers_peak_mb"] = peak_mb(resource.RUSAGE_CHILDREN)
        print(json.dumps(result))
        return

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="big-corpus-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        sizes = [float(mb) for mb in args.sizes.split(",")]
        old_sizes = [float(mb) for mb in args.old_sizes.split(",") if mb]
        texts = {}
        for mb in sorted(set(sizes) | set(old_sizes)):
            path = folder / f"generated-{mb:g}MB.txt"
            if not path.exists():
                t0 = time.perf_counter()
                generate(path, mb)
                print(f"generated {path.name}: {path.stat().st_size:,} bytes in {time.perf_counter() - t0:.0f} s",
                      flush=True)
            texts[mb] = path
        rows = []
        for tokenizer in args.tokenizers.split(","):
            tokens = str(folder / "tokens")
            runs = [("old", mb, ["old", str(texts[mb]), tokenizer]) for mb in old_sizes]
            runs += [("new", mb, ["new", str(texts[mb]), tokenizer, tokens, str(args.workers),
                                  str(args.steps if mb == max(sizes) else 0)]) for mb in sizes]
            runs += [("reuse", max(sizes), ["new", str(texts[max(sizes)]), tokenizer, tokens, str(args.workers), "0"])]
            for name, mb, child in runs:
                result = measure(child)
                rows.append((tokenizer, name, mb, result))
                print(f"  {tokenizer} {name} {mb:g} MB: {json.dumps({k: round(v, 2) if isinstance(v, float) else v for k, v in result.items()})}",
                      flush=True)
        print(f"\n{'tokenizer':<9} {'path':<6} {'text':>7} {'tokens':>12} {'read+hash':>9} {'tokenizer':>9} "
              f"{'encode':>8} {'peak RSS':>9} {'B/char':>7} {'workers':>8} {'+training':>10} {'step':>7}")
        for tokenizer, name, mb, r in rows:
            peak = r.get("peak_before_training_mb", r["peak_mb"])
            trained = f"{r['peak_mb']:.0f} MB" if "ms_per_step" in r else ""
            step = f"{r['ms_per_step']:.0f} ms" if "ms_per_step" in r else ""
            print(f"{tokenizer:<9} {name:<6} {mb:>4g} MB {r['tokens']:>12,} {r['read_s']:>8.1f}s {r['tokenizer_s']:>8.1f}s "
                  f"{r['encode_s']:>7.1f}s {peak:>6.0f} MB {(peak - r['base_mb']) * 2**20 / (mb * 10**6):>7.2f} "
                  f"{r['workers_peak_mb']:>5.0f} MB {trained:>10} {step:>7}")
        print(f"\npeak RSS: the measuring process's ru_maxrss up to the split (imports of torch and minillm: "
              f"{rows[0][3]['base_mb']:.0f} MB); B/char: that peak less the imports, per byte of text (1 byte a "
              f"character here); workers: the largest encoding worker's ru_maxrss; +training: the peak after "
              f"{args.steps} training steps of the CPU preset's model from the memmap, and the time of a step. "
              f"reuse: the token file found and checked, not encoded (the BPE tokenizer trained again, as a new run "
              f"would). Compare figures from one run only.")
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
