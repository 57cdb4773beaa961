"""Training benchmarks for lesson 20. Each prints figures; none asserts a time.

    python benchmarks/training.py throughput [--preset cpu|gpu] [--steps 10] [--rounds 7]
        tokens/s of full training steps (forward, backward, clip, AdamW) for the preset's model:
        as the Trainer runs it, with the from-scratch attention path (lesson 11) in place of the
        fused one, and with lesson 06's LayerNorm in place of torch's; MFU on a GPU.

    python benchmarks/training.py nanogpt-baby
        side by side in one run, on nanoGPT's README "baby" CPU shape (4 layers, 4 heads, 128 wide,
        context 64, batch 12, no dropout, no biases): nanoGPT's recipe (lr 1e-3 -> 1e-4, warm-up 100,
        2000 steps, its foreach AdamW) and minillm's CPU recipe (lr 6e-3 -> 6e-4, warm-up 50, 1100
        steps, fused AdamW), both in minillm's Trainer with torch's LayerNorm as nanoGPT has it: the
        wall time until the validation loss reaches 1.886 (nanoGPT's result after 2000 steps).

    python benchmarks/training.py time-to-loss [--preset cpu|gpu] [--target 2.0] [--compile]
        trains the preset as `python -m minillm train` does and reports when the validation loss
        first reaches the target, in seconds of training steps (the loss estimates, which cost
        what the evaluation schedule makes them cost, are reported apart).

Compare figures from one run only: shared machines are noisy.
"""
import argparse
import dataclasses
import os
import time

import torch

from minillm.corpus import tiny_shakespeare, train_val_split
from minillm.model import GPT, GPTConfig
from minillm.scaling import mfu
from minillm.tokenizer import CharTokenizer
from minillm.training import (TrainConfig, Trainer, describe_device, fuse_layer_norms_, get_batch, param_groups,
                              peak_flops, pick_device, preset)


def shakespeare():
    text = tiny_shakespeare()
    tok = CharTokenizer(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    return tok, *train_val_split(ids, 0.1)


def step_time(trainer: Trainer, steps: int) -> float:
    """Seconds per optimizer step of trainer.train_step, after three warm-up steps."""
    for _ in range(3):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        trainer.train_step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def throughput(args) -> None:
    device = pick_device(args.device)
    tok, train_ids, val_ids = shakespeare()
    model_config, train_config = preset(args.preset, tok.vocab_size)
    train_config = dataclasses.replace(train_config, compile=args.compile)
    variants = {
        "as trained (fused attention, torch LayerNorm)": {},
        "from-scratch attention (lesson 11 path)": {"fused_attention": False},
        "lesson-06 LayerNorm": {"fused_layer_norm": False},
    }
    trainers = {}
    for name, change in variants.items():
        torch.manual_seed(0)
        model = GPT(model_config)
        if change.get("fused_attention") is False:
            for block in model.stack.h:
                block.attn.fused = False
        config = dataclasses.replace(train_config, fused_layer_norm=change.get("fused_layer_norm", True))
        trainers[name] = Trainer(model, train_ids, val_ids, config, device=device, verbose=False)
    # interleaved rounds, so that the machine's ups and downs hit every variant alike; the median round counts
    times = {name: [] for name in trainers}
    for _ in range(args.rounds):
        for name, trainer in trainers.items():
            times[name].append(step_time(trainer, args.steps))
    results = {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}
    peak = peak_flops(device)
    for name, seconds in results.items():
        tok_s = trainers[name].tokens_per_step / seconds
        line = f"{name:<48} {seconds * 1e3:8.1f} ms/step {tok_s:>12,.0f} tokens/s"
        if peak:
            line += f"   MFU {mfu(tok_s, model_config, peak):.1%}"
        print(line, flush=True)
    base = results["as trained (fused attention, torch LayerNorm)"]
    for name, seconds in results.items():
        print(f"  {name}: {seconds / base:.2f}x the time of the trained configuration")
    print(f"preset {args.preset}: {model_config}, batch {train_config.batch_size}; {describe_device(device)}; "
          f"torch {torch.__version__}; median of {args.rounds} interleaved rounds of {args.steps} steps")


def baby_run(label: str, recipe: dict, train_ids, val_ids, vocab_size: int, target: float, eval_interval: int,
             foreach_adamw: bool) -> dict:
    torch.manual_seed(1337)
    model = GPT(GPTConfig(block_size=64, vocab_size=vocab_size, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False))
    config = TrainConfig(batch_size=12, weight_decay=0.1, beta1=0.9, beta2=0.99, grad_clip=1.0, eval_iters=20,
                         eval_interval=eval_interval, sample_interval=0, **recipe)
    trainer = Trainer(model, train_ids, val_ids, config, device="cpu", verbose=False)
    if foreach_adamw:                              # nanoGPT on a CPU: torch's default AdamW, not the fused one
        trainer.optimizer = torch.optim.AdamW(param_groups(trainer.model, config.weight_decay),
                                              lr=config.learning_rate, betas=(config.beta1, config.beta2))
    reached = {}

    class RecordWhenReached:
        def on_eval(self, t, row):
            if row["val_loss"] <= target and not reached:
                reached.update(row)
    trainer.callbacks.append(RecordWhenReached())
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    last = trainer.history[-1]
    result = {"label": label, "steps": last["step"], "final_val": last["val_loss"], "wall": wall,
              "ms_per_step": trainer.train_seconds / last["step"] * 1e3,
              "reached_step": reached.get("step"), "reached_wall": reached.get("seconds")}
    print(f"{label:<34} {result['ms_per_step']:6.1f} ms/step, final val {last['val_loss']:.4f} after "
          f"{last['step']} steps in {wall:.1f} s; val <= {target} "
          + (f"at step {reached['step']} after {reached['seconds']:.1f} s" if reached else "not reached"),
          flush=True)
    trainer.close()
    return result


def nanogpt_baby(args) -> None:
    torch.set_num_threads(args.threads or torch.get_num_threads())
    tok, train_ids, val_ids = shakespeare()
    print(f"{describe_device(torch.device('cpu'))}, torch {torch.__version__}; target validation loss {args.target}")
    runs = []
    for repeat in range(args.repeats):
        runs.append(baby_run("nanoGPT recipe (2000 steps, 1e-3)",
                             dict(max_steps=2000, learning_rate=1e-3, min_lr=1e-4, warmup_steps=100),
                             train_ids, val_ids, tok.vocab_size, args.target, 250, foreach_adamw=True))
        runs.append(baby_run("minillm CPU recipe (1100 steps, 6e-3)",
                             dict(max_steps=1100, learning_rate=6e-3, min_lr=6e-4, warmup_steps=50),
                             train_ids, val_ids, tok.vocab_size, args.target, 100, foreach_adamw=False))
    for base, ours in zip(runs[::2], runs[1::2]):
        if base["reached_wall"] and ours["reached_wall"]:
            print(f"time to val <= {args.target}: nanoGPT recipe {base['reached_wall']:.1f} s, minillm "
                  f"{ours['reached_wall']:.1f} s: {base['reached_wall'] / ours['reached_wall']:.2f}x less wall time; "
                  f"whole runs {base['wall']:.1f} s vs {ours['wall']:.1f} s")


def time_to_loss(args) -> None:
    device = pick_device(args.device)
    tok, train_ids, val_ids = shakespeare()
    model_config, train_config = preset(args.preset, tok.vocab_size)
    changes = {"sample_interval": 0, "compile": args.compile}
    if args.eval_interval:
        changes["eval_interval"] = args.eval_interval
    train_config = dataclasses.replace(train_config, **changes)
    torch.manual_seed(train_config.seed)
    trainer = Trainer(GPT(model_config), train_ids, val_ids, train_config, tok, device=device, verbose=args.progress)
    t0 = time.perf_counter()
    trainer.fit()
    wall = time.perf_counter() - t0
    hit = next((row for row in trainer.history if row["val_loss"] <= args.target), None)
    last = trainer.history[-1]
    tok_s = last["tokens"] / trainer.train_seconds
    line = (f"preset {args.preset} on {describe_device(device)}: {last['step']} steps in {wall:.1f} s "
            f"({trainer.train_seconds:.1f} s in training steps, {tok_s:,.0f} tokens/s); final val {last['val_loss']:.4f}; "
            + (f"val <= {args.target} at step {hit['step']} after {hit['train_seconds']:.1f} s of training "
               f"({hit['seconds']:.1f} s wall, evaluation and checkpoints included)" if hit else
               f"val never reached {args.target}"))
    peak = peak_flops(device)
    if peak:
        line += f"; MFU {mfu(tok_s, model_config, peak):.1%}"
    print(line)
    evals = len(trainer.history)
    overhead = trainer.seconds - trainer.train_seconds
    print(f"evaluation: {evals} estimates of {train_config.eval_iters} batches per split every "
          f"{train_config.eval_interval} steps cost {overhead:.1f} s of the {trainer.seconds:.1f} s "
          f"({overhead / max(trainer.seconds, 1e-9):.0%}); the time to the target above counts training steps only")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("throughput")
    p.add_argument("--preset", default="auto")
    p.add_argument("--steps", type=int, default=10, help="steps per round")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median counts")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true")
    p.set_defaults(run=throughput)
    p = sub.add_parser("nanogpt-baby")
    p.add_argument("--target", type=float, default=1.886)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(run=nanogpt_baby)
    p = sub.add_parser("time-to-loss")
    p.add_argument("--preset", default="auto")
    p.add_argument("--target", type=float, default=2.0)
    p.add_argument("--device", default="auto")
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--compile", action="store_true")
    p.add_argument("--progress", action="store_true")
    p.set_defaults(run=time_to_loss)
    args = parser.parse_args()
    if os.environ.get("MINILLM_QUICK") == "1":
        print("note: MINILLM_QUICK=1 is set; presets are switched down")
    args.run(args)


if __name__ == "__main__":
    main()
