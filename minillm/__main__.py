"""The command line: `python -m minillm <command>`; `python -m minillm --help` lists them.

    python -m minillm data                     get Tiny Shakespeare into the cache
    python -m minillm train [options]          train a GPT (lesson 20), on Tiny Shakespeare or --data FILE
    python -m minillm sample --out RUN_DIR     write text with a trained model
"""
import argparse
import json
import sys
from pathlib import Path


def cmd_data(args: argparse.Namespace) -> int:
    from minillm.corpus import CorpusError, corpus_path

    try:
        path = corpus_path(offline=True if args.offline else None)  # None: $MINILLM_OFFLINE decides
    except CorpusError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"Tiny Shakespeare is ready: {path} (SHA-256 verified)")
    return 0


# ---- train --------------------------------------------------------------------------------

MODEL_OPTIONS = {   # option -> (GPTConfig field, type, help)
    "--n-layer": ("n_layer", int, "transformer blocks"),
    "--n-head": ("n_head", int, "attention heads per block (must divide --n-embd)"),
    "--n-embd": ("n_embd", int, "width of every token's vector"),
    "--block-size": ("block_size", int, "context length: the most tokens the model reads at once"),
    "--dropout": ("dropout", float, "dropout rate while training (0 to switch it off)"),
}
TRAIN_OPTIONS = {   # option -> (TrainConfig field, type, help)
    "--batch-size": ("batch_size", int, "sequences per micro-batch (per process under torchrun)"),
    "--grad-accum": ("grad_accum_steps", int, "micro-batches added up per optimizer step"),
    "--max-steps": ("max_steps", int, "optimizer steps in all (the cosine schedule ends here)"),
    "--lr": ("learning_rate", float, "peak learning rate, reached after warm-up"),
    "--min-lr": ("min_lr", float, "learning rate at the end of the cosine decay"),
    "--warmup-steps": ("warmup_steps", int, "steps of linear warm-up"),
    "--weight-decay": ("weight_decay", float, "AdamW weight decay, on weight matrices only"),
    "--grad-clip": ("grad_clip", float, "clip the gradient's global norm to this (0: no clipping)"),
    "--eval-interval": ("eval_interval", int, "estimate train/val loss and save a checkpoint every N steps"),
    "--eval-iters": ("eval_iters", int, "batches per loss estimate"),
    "--sample-interval": ("sample_interval", int, "print a sample every N steps (0: never)"),
    "--seed": ("seed", int, "random seed: the initial weights, batches, dropout and samples follow from it"),
    "--precision": ("precision", str, "auto (bf16 autocast on a CUDA GPU that has it, else fp32), fp32 or bf16"),
}


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SystemExit(f"error: --data {path}: no such file") from None
    except UnicodeDecodeError as e:
        raise SystemExit(f"error: --data {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise SystemExit(f"error: --data {path} is empty")
    return text


def _corpus(data):
    """(text, name) of --data, or of Tiny Shakespeare when --data is not given."""
    if data is None:
        from minillm.corpus import CorpusError, tiny_shakespeare
        try:
            return tiny_shakespeare(), "tinyshakespeare"
        except CorpusError as e:
            raise SystemExit(f"error: {e}") from None
    return _read_text(Path(data)), Path(data).stem


def cmd_train(args: argparse.Namespace) -> int:
    import dataclasses

    import torch

    from minillm.corpus import atomic_write_bytes, train_val_split
    from minillm.model import GPT
    from minillm.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict
    from minillm.training import CheckpointError, Trainer, ddp_env, load_checkpoint, plot_losses, preset

    out = Path(args.out) if args.out else None
    run_file = out / "run.json" if out else None
    if args.resume:
        if out is None or not (out / "checkpoint.pt").is_file():
            print(f"error: --resume needs --out pointing at a run directory with a checkpoint.pt "
                  f"(got --out {args.out})", file=sys.stderr)
            return 2
        if args.data is None and run_file.is_file():              # train on the run's own text again
            args.data = json.loads(run_file.read_text()).get("data")
    text, name = _corpus(args.data)
    out = out or Path("runs") / name
    checkpoint = out / "checkpoint.pt"
    master = (ddp_env() or (0,))[0] == 0

    if args.resume:
        try:
            ckpt = load_checkpoint(checkpoint)                     # loaded once: its tokenizer encodes the text
            tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
            ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            train_ids, val_ids = train_val_split(ids, args.val_fraction)
            trainer = Trainer.resume(checkpoint, train_ids, val_ids, run_dir=out, device=args.device,
                                     max_steps=args.max_steps, ckpt=ckpt)
        except (CheckpointError, ValueError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"Resuming {checkpoint} at step {trainer.step} of {trainer.config.max_steps}")
    else:
        if checkpoint.exists():
            print(f"error: {out} already holds a checkpoint; continue it with --resume, or choose another --out "
                  f"(nothing was overwritten)", file=sys.stderr)
            return 2
        if args.tokenizer == "char":
            tokenizer = CharTokenizer(text)
        else:
            tokenizer = BPETokenizer().train(text, args.vocab_size)
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        try:
            model_config, train_config = preset(args.preset, tokenizer.vocab_size)
            model_config = dataclasses.replace(model_config, **{field: getattr(args, field) for field, _, _ in
                                                                MODEL_OPTIONS.values() if getattr(args, field) is not None})
            changes = {field: getattr(args, field) for field, _, _ in TRAIN_OPTIONS.values()
                       if getattr(args, field) is not None}
            if args.compile is not None:
                changes["compile"] = args.compile
            train_config = dataclasses.replace(train_config, **changes)
            train_ids, val_ids = train_val_split(ids, args.val_fraction)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if min(len(train_ids), len(val_ids)) <= model_config.block_size:
            print(f"error: {args.data or name} gives {len(ids):,} tokens: too few for a validation split of "
                  f"{args.val_fraction} with --block-size {model_config.block_size}; use a longer text or a "
                  f"smaller --block-size", file=sys.stderr)
            return 2
        print(f"{name}: {len(text):,} characters -> {len(ids):,} tokens ({type(tokenizer).__name__}, "
              f"vocabulary {tokenizer.vocab_size})")
        print(model_config)
        print(train_config)
        torch.manual_seed(train_config.seed)
        try:
            trainer = Trainer(GPT(model_config), train_ids, val_ids, train_config, tokenizer, run_dir=out,
                              device=args.device)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if master:
            out.mkdir(parents=True, exist_ok=True)
            run = {"data": str(Path(args.data).resolve()) if args.data else None, "tokenizer": args.tokenizer,
                   "command": sys.argv[1:]}
            atomic_write_bytes(run_file, json.dumps(run, indent=2).encode("utf-8"))
    history = trainer.fit()
    stopped = trainer.step < trainer.config.max_steps
    if master and history:
        plot_losses(history, path=out / "loss.png", title=name)
        last = history[-1]
        print(f"step {last['step']}: train loss {last['train_loss']:.4f}, validation loss {last['val_loss']:.4f}"
              + (f", {trainer.tokens_per_second:,.0f} tokens/s" if trainer.tokens_per_second else ""))
        if not stopped:
            sample = trainer.sample(max_new_tokens=300)
            if sample is not None:
                trainer.record_sample(sample)
                print(f"--- sample ---\n{sample}\n---")
        print(f"run directory: {out} (checkpoint.pt, loss.csv, loss.png, samples.txt)")
        print(f"sample more:   python -m minillm sample --out {out}")
    trainer.close()
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    import torch

    from minillm.generation import generate_text
    from minillm.training import CheckpointError, load_model, pick_device

    path = Path(args.checkpoint) if args.checkpoint else Path(args.out) / "checkpoint.pt"
    try:
        device = pick_device(args.device, verbose=False)
        model, tokenizer = load_model(path, device=device)
    except (CheckpointError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if tokenizer is None:
        print(f"error: {path} holds no tokenizer, so its ids cannot be turned into text", file=sys.stderr)
        return 1
    prompt = args.prompt.encode().decode("unicode_escape") if args.escapes else args.prompt
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    try:
        for i in range(args.num_samples):
            text = generate_text(model, tokenizer, prompt, args.tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, generator=generator)
            print(text if args.num_samples == 1 else f"--- sample {i + 1} ---\n{text}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


class _HelpWithDefaults(argparse.HelpFormatter):
    """Adds "(default: ...)" to an option's help, unless the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minillm", description="minillm: a GPT built from scratch in twenty lessons.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="download Tiny Shakespeare into the cache (or verify the copy there)",
                       description="Download Tiny Shakespeare once, checked against its SHA-256, into $MINILLM_DATA "
                                   "(default ~/.cache/minillm); a later call only verifies the copy.")
    p.add_argument("--offline", action="store_true", help="never download; fail with instructions if there is no good copy")
    p.set_defaults(run=cmd_data)

    p = sub.add_parser("train", help="train a GPT on Tiny Shakespeare or on your own text (lesson 20)",
                       formatter_class=_HelpWithDefaults,
                       description="Train a GPT as lesson 20 does. The preset picks the sizes for this machine (a GPU: "
                                   "6 layers, 384 wide, 5000 steps; a CPU: 4 layers, 128 wide, about 4 minutes on 2 cores); "
                                   "every option below overrides one value of it. Writes OUT/checkpoint.pt (model, "
                                   "optimizer, step, tokenizer, RNG states), loss.csv, loss.png and samples.txt. "
                                   "Ctrl-C stops after the current step and saves; --resume continues exactly. "
                                   "Under torchrun it trains with DistributedDataParallel, one process per GPU.")
    p.add_argument("--data", metavar="FILE", help="a UTF-8 text file to train on (default: Tiny Shakespeare)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="char: one token per character; bpe: byte-level BPE trained on the text (lesson 02)")
    p.add_argument("--vocab-size", type=_positive_int, default=512, help="vocabulary size of the BPE tokenizer")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name of the text>)")
    p.add_argument("--preset", choices=["auto", "gpu", "cpu", "quick"], default="auto",
                   help="sizes: auto picks gpu on a CUDA GPU, cpu elsewhere, quick under MINILLM_QUICK=1")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint (the same text; --max-steps may extend it)")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--val-fraction", type=float, default=0.1, help="the share of the text, at its end, kept for validation")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on with the gpu preset, off otherwise)")
    group = p.add_argument_group("model (overrides the preset; ignored with --resume)")
    for option, (field, kind, text) in MODEL_OPTIONS.items():
        group.add_argument(option, dest=field, type=kind, default=None, help=f"{text} (default: from the preset)")
    group = p.add_argument_group("training (overrides the preset; with --resume only --max-steps)")
    for option, (field, kind, text) in TRAIN_OPTIONS.items():
        group.add_argument(option, dest=field, type=kind, default=None, help=f"{text} (default: from the preset)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("sample", help="write text with a trained model",
                       formatter_class=_HelpWithDefaults,
                       description="Continue a prompt with the model saved by `python -m minillm train`.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", default="runs/tinyshakespeare", help="the run directory to sample from")
    where.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file, instead of --out")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--escapes", action="store_true", help="read \\n and \\t in --prompt as a newline and a tab")
    p.add_argument("--tokens", type=_positive_int, default=500, help="how many tokens to write")
    p.add_argument("--num-samples", type=_positive_int, default=1, help="how many samples")
    p.add_argument("--temperature", type=float, default=0.8, help="below 1: safer, above 1: wilder; 0: greedy")
    p.add_argument("--top-k", type=_positive_int, default=None, help="draw only from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None, help="draw only from the smallest set holding this much probability")
    p.add_argument("--seed", type=int, default=None, help="a seed for a repeatable sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=cmd_sample)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
