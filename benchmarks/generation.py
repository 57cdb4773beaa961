"""Generation with and without the key/value cache on the CPU: tokens per second of lesson
18's `generate` (greedy) for 64, 256 and 512 new tokens, each way, and the speed-up.
Without the cache, step t runs the model on all T + t tokens so far; with it, on the one
new token. The model is untrained (speed does not depend on the weights), the course's
character model by default (6 layers, 6 heads, n_embd 384) with a block of 1024 positions
so that 512 new tokens fit without cropping. It also checks that both ways give the
same tokens. Compare only figures from one run: these machines are noisy.

    python benchmarks/generation.py                          # 64, 256 and 512 new tokens
    python benchmarks/generation.py --threads 1              # steadier on a busy machine
    python benchmarks/generation.py --new-tokens 64 256 --n-layer 4 --n-embd 128 --threads 1
"""
import argparse
import platform
import time

import torch

from minillm.generation import generate
from minillm.model import GPT, GPTConfig


def timed_generate(model: GPT, prompt: torch.Tensor, n: int, use_cache: bool) -> tuple[torch.Tensor, float]:
    """(the generated ids, seconds) for n greedy tokens after prompt."""
    start = time.perf_counter()
    out = generate(model, prompt, n, temperature=0, use_cache=use_cache)
    return out, time.perf_counter() - start


def compare(new_tokens=(64, 256, 512), n_layer: int = 6, n_head: int = 6, n_embd: int = 384,
            block_size: int = 1024, vocab_size: int = 65, prompt_len: int = 16, seed: int = 0,
            threads: int | None = None) -> list[dict]:
    """One row per number of new tokens n: seconds and tokens per second with and without
    the cache, the speed-up (cached tokens/s over uncached), and whether both gave the same
    tokens. One prompt of prompt_len random ids, greedy decoding. threads: torch's number
    of threads during the measurement (restored afterwards)."""
    if prompt_len + max(new_tokens) > block_size:
        raise ValueError(f"prompt_len + new tokens = {prompt_len + max(new_tokens)} exceeds block_size={block_size}: "
                         f"the cached path would have to recompute its cache, and the comparison would not be fair")
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        torch.manual_seed(seed)
        model = GPT(GPTConfig(block_size=block_size, vocab_size=vocab_size, n_layer=n_layer, n_head=n_head,
                              n_embd=n_embd)).eval()
        prompt = torch.randint(0, vocab_size, (1, prompt_len))
        generate(model, prompt, 8, temperature=0, use_cache=True)      # warm up
        generate(model, prompt, 8, temperature=0, use_cache=False)
        rows = []
        for n in new_tokens:
            cached, cached_s = timed_generate(model, prompt, n, use_cache=True)
            uncached, uncached_s = timed_generate(model, prompt, n, use_cache=False)
            rows.append({"new_tokens": n, "cached_s": cached_s, "uncached_s": uncached_s,
                         "cached_tok_s": n / cached_s, "uncached_tok_s": n / uncached_s,
                         "speedup": uncached_s / cached_s, "same_tokens": torch.equal(cached, uncached)})
        return rows
    finally:
        torch.set_num_threads(saved_threads)


def print_table(rows: list[dict]) -> None:
    print(f"{'new tokens':>10} | {'with cache':>14} | {'without cache':>14} | {'speed-up':>8} | same tokens")
    for r in rows:
        print(f"{r['new_tokens']:10d} | {r['cached_tok_s']:8.1f} tok/s | {r['uncached_tok_s']:8.1f} tok/s | "
              f"{r['speedup']:7.1f}x | {'yes' if r['same_tokens'] else 'NO'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[64, 256, 512])
    parser.add_argument("--n-layer", type=int, default=6)
    parser.add_argument("--n-head", type=int, default=6)
    parser.add_argument("--n-embd", type=int, default=384)
    parser.add_argument("--block-size", type=int, default=1024)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice; 1 is steadier on a busy machine)")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    print(f"greedy generation after a {args.prompt_len}-token prompt, batch 1; GPT with {args.n_layer} layers, "
          f"{args.n_head} heads, n_embd {args.n_embd}, block {args.block_size}, untrained; float32; "
          f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{threads} thread{'s' if threads > 1 else ''}")
    print_table(compare(args.new_tokens, args.n_layer, args.n_head, args.n_embd, args.block_size,
                        prompt_len=args.prompt_len, threads=args.threads))


if __name__ == "__main__":
    main()
