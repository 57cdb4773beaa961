"""Fused against from-scratch attention on the CPU: how much faster PyTorch's
F.scaled_dot_product_attention is than lesson 11's `scaled_dot_product_attention`, at
sequence lengths 64, 256 and 1024, for the attention alone and inside lesson 12's
CausalSelfAttention (where the projections, the same in both, dilute the difference).
It prints figures and asserts nothing about them; compare only figures from one run:
these machines are noisy.

    python benchmarks/attention.py                     # forward, batch 4, n_embd 256, 4 heads
    python benchmarks/attention.py --backward          # forward and backward
    python benchmarks/attention.py --lengths 64 256 --batch 1 --repeat 3
"""
import argparse
import platform
import time

import torch
import torch.nn.functional as F

from minillm.attention import scaled_dot_product_attention
from minillm.causal_self_attention import CausalSelfAttention


def best_time(fn, repeat: int, min_seconds: float = 0.05) -> float:
    """The fastest of at least `repeat` runs, and of as many more as fit in `min_seconds`,
    after two warm-up runs, in seconds. The fastest run is the one least disturbed by
    whatever else the machine was doing."""
    fn()
    fn()
    best, spent, runs = float("inf"), 0.0, 0
    while runs < repeat or spent < min_seconds:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, runs = min(best, elapsed), spent + elapsed, runs + 1
    return best


def compare(lengths=(64, 256, 1024), batch: int = 4, n_embd: int = 256, n_head: int = 4,
            repeat: int = 5, backward: bool = False, seed: int = 0, threads: int | None = None,
            min_seconds: float = 0.2) -> list[dict]:
    """One row per sequence length T: seconds per call of the attention alone (q, k, v of
    shape (batch, n_head, T, n_embd // n_head), causal) and of the whole module, fused and
    from scratch, and the ratios scratch / fused (above 1: the fused one is faster).
    threads: torch's number of threads during the measurement (restored afterwards)."""
    saved_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _compare(lengths, batch, n_embd, n_head, repeat, backward, seed, min_seconds)
    finally:
        torch.set_num_threads(saved_threads)


def _compare(lengths, batch, n_embd, n_head, repeat, backward, seed, min_seconds):
    torch.manual_seed(seed)
    hs = n_embd // n_head
    module = CausalSelfAttention(n_embd, n_head, block_size=max(lengths)).eval()
    rows = []
    for T in lengths:
        x = torch.randn(batch, T, n_embd, requires_grad=backward)
        q, k, v = (torch.randn(batch, n_head, T, hs, requires_grad=backward) for _ in range(3))

        def run(fn):
            def call():
                if backward:
                    fn().sum().backward()
                else:
                    with torch.no_grad():
                        fn()
            return best_time(call, repeat, min_seconds)

        def module_call(fused):
            def fn():
                module.fused = fused
                return module(x)
            return fn

        row = {"T": T,
               "core_fused_s": run(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)),
               "core_scratch_s": run(lambda: scaled_dot_product_attention(q, k, v, is_causal=True)),
               "module_fused_s": run(module_call(True)),
               "module_scratch_s": run(module_call(False))}
        row["core_ratio"] = row["core_scratch_s"] / row["core_fused_s"]
        row["module_ratio"] = row["module_scratch_s"] / row["module_fused_s"]
        rows.append(row)
    module.fused = True
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'T':>6} | {'attention only: fused':>22} {'scratch':>10} {'ratio':>7} | "
          f"{'whole module: fused':>20} {'scratch':>10} {'ratio':>7}")
    for r in rows:
        print(f"{r['T']:6d} | {r['core_fused_s'] * 1e3:19.2f} ms {r['core_scratch_s'] * 1e3:7.2f} ms {r['core_ratio']:6.1f}x | "
              f"{r['module_fused_s'] * 1e3:17.2f} ms {r['module_scratch_s'] * 1e3:7.2f} ms {r['module_ratio']:6.1f}x")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024], help="sequence lengths T")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per figure; the fastest is shown")
    parser.add_argument("--backward", action="store_true", help="time forward and backward")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: torch's choice; 1 is steadier on a busy machine)")
    args = parser.parse_args()
    threads = args.threads or torch.get_num_threads()
    print(f"{'forward + backward' if args.backward else 'forward'}, batch {args.batch}, n_embd {args.n_embd}, "
          f"{args.n_head} heads, causal, float32; torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {threads} thread{'s' if threads > 1 else ''}")
    print_table(compare(args.lengths, args.batch, args.n_embd, args.n_head, args.repeat, args.backward,
                        threads=args.threads))


if __name__ == "__main__":
    main()
