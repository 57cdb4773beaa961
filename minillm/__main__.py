"""The command line: `python -m minillm <command>`; `python -m minillm --help` lists them.

    python -m minillm data                     get Tiny Shakespeare into the cache
    python -m minillm train [options]          train a GPT (lesson 20), on Tiny Shakespeare or --data FILE
    python -m minillm sample --out RUN_DIR     write text with a trained model

Every mistake in the input (an option, a file, a run directory) is one line on stderr that names
the option and the value, and exit status 2. A run that diverges exits with 1, one stopped by
Ctrl-C with 130 and one stopped by SIGTERM with 143, so that scripts can tell them from a finished one.
"""
import argparse
import hashlib
import json
import math
import re
import sys
import tempfile
from pathlib import Path

EXIT_FAILED, EXIT_USAGE = 1, 2


class UsageError(Exception):
    """A mistake in the command's input: printed as one line, exit status 2."""


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
    "--seed": ("seed", None, "random seed, 0 to 2**32 - 1: the initial weights, batches, dropout and samples "
                             "follow from it"),
    "--precision": ("precision", str, "auto (bf16 autocast on a CUDA GPU that has it, else fp32), fp32 or bf16"),
}
OPTION_OF = {field: option for option, (field, _, _) in {**MODEL_OPTIONS, **TRAIN_OPTIONS}.items()}
OPTION_OF["compile"] = "--compile"
RUN_FILE = "run.json"


def _option_message(e: Exception) -> str:
    """A GPTConfig/TrainConfig error in the command line's words: "TrainConfig: seed must be
    ..." -> "--seed must be ...", "n_embd=32 is not divisible by n_head=3" -> "--n-embd 32 is
    not divisible by --n-head 3"."""
    text = re.sub(r"^(?:GPTConfig|TrainConfig): ", "", str(e))
    text = re.sub(r"\b(\w+)=", lambda m: f"{OPTION_OF[m.group(1)]} " if m.group(1) in OPTION_OF else m.group(0), text)
    return re.sub(r"^(\w+)\b", lambda m: OPTION_OF.get(m.group(1), m.group(1)), text)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UsageError(f"--data {path}: no such file") from None
    except IsADirectoryError:
        raise UsageError(f"--data {path} is a directory; give a UTF-8 text file") from None
    except OSError as e:
        raise UsageError(f"--data {path} cannot be read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UsageError(f"--data {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not text:
        raise UsageError(f"--data {path} is empty")
    return text


def _corpus(data) -> tuple:
    """(text, name) of --data, or of Tiny Shakespeare when --data is not given."""
    if data is None:
        from minillm.corpus import CorpusError, tiny_shakespeare
        try:
            return tiny_shakespeare(), "tinyshakespeare"
        except CorpusError as e:
            raise UsageError(str(e)) from None
    return _read_text(Path(data)), Path(data).stem


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _check_out(out: Path) -> None:
    """--out must be a folder this process can create and write in (checked without leaving anything)."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file, not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


def _read_run(out: Path) -> dict:
    path = out / RUN_FILE
    if not path.is_file():
        raise UsageError(f"--out {out} has no {RUN_FILE}, so --resume cannot check that it continues the same run "
                         f"(was it made by `python -m minillm train`?); continue it in Python with Trainer.resume")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else getattr(e, "reason", None) or e
        raise UsageError(f"{path} is damaged ({reason}), so --resume cannot check that it continues the same "
                         f"run; restore it, or start a new run") from None
    if not isinstance(run, dict):
        raise UsageError(f"{path} is damaged (it holds a {type(run).__name__}, not a record of the run)")
    return run


def _given(args, fields) -> dict:
    return {field: getattr(args, field) for field in fields if getattr(args, field, None) is not None}


def _resume_changes(args, ckpt: dict, run: dict) -> tuple:
    """The options given with --resume, sorted: (changes the resumed run applies, messages for
    the ones it must refuse). A value equal to the run's own is neither."""
    from minillm.training import RESUME_CHANGEABLE

    recorded = {**(ckpt.get("model_config") or {}), **(ckpt.get("train_config") or {})}
    given = _given(args, [f for f, _, _ in {**MODEL_OPTIONS, **TRAIN_OPTIONS}.values()])
    if args.compile is not None:
        given["compile"] = args.compile
    changes, refused = {}, []
    for field, value in given.items():
        if recorded.get(field) == value:
            continue
        if field in RESUME_CHANGEABLE:
            changes[field] = value
        else:
            refused.append(f"{OPTION_OF[field]} {value} (the run has {recorded.get(field)})")
    for option, field, value in (("--tokenizer", "tokenizer", args.tokenizer), ("--vocab-size", "vocab_size",
                                 args.vocab_size), ("--val-fraction", "val_fraction", args.val_fraction),
                                 ("--preset", "preset", args.preset)):
        if value is not None and field in run and run[field] != value:
            refused.append(f"{option} {value} (the run has {run[field]})")
    return changes, refused


def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _train(args: argparse.Namespace) -> int:
    from minillm.training import RunDirectoryLocked, RunLock, ddp_env, pick_device

    master = (ddp_env() or (0,))[0] == 0
    try:
        pick_device(args.device, verbose=False)
    except ValueError as e:
        raise UsageError(f"--device {args.device}: {e}") from None
    run = configs = None
    if args.resume:
        if args.out is None:
            raise UsageError("--resume needs --out, the run directory to continue")
        out = Path(args.out)
        if not (out / "checkpoint.pt").is_file():
            raise UsageError(f"--resume: --out {out} holds no checkpoint.pt to continue")
        run = _read_run(out)
        data = args.data if args.data is not None else run.get("data")   # the run's own text, unless given
        text, name = _corpus(data)
        digest = _sha256(text)
        if run.get("data_sha256") is not None and run["data_sha256"] != digest:
            what = f"--data {args.data}" if args.data is not None else f"{data or 'Tiny Shakespeare'} (from {RUN_FILE})"
            raise UsageError(f"{what} is not the text this run was trained on (SHA-256 {digest[:12]}..., the run's "
                             f"{run['data_sha256'][:12]}...); resume with the same text, or start a new run")
    else:
        if args.tokenizer == "bpe" and args.vocab_size is not None and args.vocab_size < 256:
            raise UsageError(f"--vocab-size {args.vocab_size}: a byte-level BPE vocabulary needs at least 256 "
                             f"tokens, one for each byte")
        if args.val_fraction is not None and not 0 < args.val_fraction < 1:
            raise UsageError(f"--val-fraction {args.val_fraction}: must be between 0 and 1")
        text, name = _corpus(args.data)
        out = Path(args.out) if args.out else Path("runs") / name
        configs = _configs(args)                          # checked before anything is made on disk
    lock = None
    if master:                                        # under torchrun, process 0 writes, so it alone locks
        _check_out(out)
        try:
            lock = RunLock(out).acquire()
        except RunDirectoryLocked as e:
            raise UsageError(str(e)) from None
    try:
        return _train_locked(args, out, text, name, master, run, configs)
    finally:
        if lock is not None:
            lock.release()


def _configs(args) -> tuple:
    """(GPTConfig, TrainConfig) of the preset with the options given; UsageError names a bad one.
    The GPTConfig's vocab_size is a placeholder until the tokenizer is trained."""
    import dataclasses

    from minillm.training import preset

    try:
        model_config, train_config = preset(args.preset or "auto", 1)
        model_config = dataclasses.replace(model_config, **_given(args, [f for f, _, _ in MODEL_OPTIONS.values()]))
        changes = _given(args, [f for f, _, _ in TRAIN_OPTIONS.values()])
        if args.compile is not None:
            changes["compile"] = args.compile
        return model_config, dataclasses.replace(train_config, **changes)
    except (TypeError, ValueError) as e:
        raise UsageError(_option_message(e)) from None


def _train_locked(args, out: Path, text: str, name: str, master: bool, run: dict | None, configs) -> int:
    """The training run, with the run directory locked (by process 0)."""
    import dataclasses

    import torch

    from minillm.corpus import atomic_write_bytes, train_val_split
    from minillm.model import GPT
    from minillm.tokenizer import BPETokenizer, CharTokenizer, tokenizer_from_dict
    from minillm.training import (CheckpointError, Trainer, TrainingDiverged, load_checkpoint, plot_losses,
                                  remove_stale_parts)

    checkpoint = out / "checkpoint.pt"
    if master:
        removed = remove_stale_parts(out)
        if removed:
            print(f"removed {len(removed)} temporary file(s) that an interrupted save left in {out}")
    if args.resume:
        try:
            ckpt = load_checkpoint(checkpoint)                    # loaded once: its tokenizer encodes the text
        except CheckpointError as e:
            raise UsageError(str(e)) from None
        changes, refused = _resume_changes(args, ckpt, run)
        if refused:
            raise UsageError(f"--resume continues the run in {out} with its own settings, and these differ from "
                             f"it: {'; '.join(refused)}. Leave them out, or start a new run with another --out")
        val_fraction = run.get("val_fraction", 0.1)
        try:
            tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
            ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
            train_ids, val_ids = train_val_split(ids, val_fraction)
            trainer = Trainer.resume(checkpoint, train_ids, val_ids, run_dir=out, device=args.device, ckpt=ckpt,
                                     changes=changes)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{checkpoint}: {_option_message(e)}") from None
        for field, value in changes.items():
            print(f"note: {OPTION_OF[field]} {value} applied (the run had {ckpt['train_config'].get(field)})")
        if args.data is None and run.get("data_sha256") is None:
            print(f"note: {out / RUN_FILE} records no SHA-256 of the text, so it could not be checked")
        print(f"Resuming {checkpoint} at step {trainer.step} of {trainer.config.max_steps}")
    else:
        if checkpoint.exists():
            raise UsageError(f"--out {out} already holds a checkpoint; continue it with --resume, or choose another "
                             f"--out (nothing was overwritten)")
        vocab_size = args.vocab_size if args.vocab_size is not None else 512
        val_fraction = args.val_fraction if args.val_fraction is not None else 0.1
        model_config, train_config = configs
        if (args.tokenizer or "char") == "char":
            tokenizer = CharTokenizer(text)
        else:
            tokenizer = BPETokenizer().train(text, vocab_size)
        ids = torch.tensor(tokenizer.encode(text), dtype=torch.long)
        model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
        train_ids, val_ids = train_val_split(ids, val_fraction)
        if min(len(train_ids), len(val_ids)) <= model_config.block_size:
            raise UsageError(f"--data {args.data or name} gives {len(ids):,} tokens: too few for a validation split "
                             f"of {val_fraction} with --block-size {model_config.block_size}; use a longer text or "
                             f"a smaller --block-size")
        print(f"{name}: {len(text):,} characters -> {len(ids):,} tokens ({type(tokenizer).__name__}, "
              f"vocabulary {tokenizer.vocab_size})")
        print(model_config)
        print(train_config)
        torch.manual_seed(train_config.seed)
        try:
            trainer = Trainer(GPT(model_config), train_ids, val_ids, train_config, tokenizer, run_dir=out,
                              device=args.device)
        except ValueError as e:
            raise UsageError(_option_message(e)) from None
        if master:
            kind = args.tokenizer or "char"
            run = {"data": str(Path(args.data).resolve()) if args.data else None, "data_sha256": _sha256(text),
                   "tokenizer": kind, "vocab_size": tokenizer.vocab_size if kind == "bpe" else None,
                   "val_fraction": val_fraction, "preset": args.preset or "auto",
                   "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
                   "command": sys.argv[1:]}
            atomic_write_bytes(out / RUN_FILE, json.dumps(run, indent=2).encode("utf-8"))
    try:
        history = trainer.fit()
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        trainer.close()
        return EXIT_FAILED
    except OSError as e:
        print(f"error: writing to {out} failed: {e}; the last checkpoint written is kept", file=sys.stderr)
        trainer.close()
        return EXIT_FAILED
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
        print(f"run directory: {out} (checkpoint.pt, best.pt, loss.csv, loss.png, samples.txt)")
        print(f"sample more:   python -m minillm sample --out {out}")
    stop_signal = trainer.stop_signal
    trainer.close()
    if stop_signal is not None:
        return 128 + int(stop_signal)                                # 130 for Ctrl-C, 143 for SIGTERM
    return 0


# ---- sample -------------------------------------------------------------------------------

SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0"}
ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|.|$)", re.DOTALL)


def decode_escapes(text: str, option: str = "--prompt") -> str:
    """Python's backslash escapes in text (\\n, \\t, \\r, \\\\, \\', \\", \\0, \\xHH, \\uHHHH,
    \\UHHHHHHHH) turned into the characters they name; every other character, "café" too,
    stays as it is. A malformed escape raises UsageError naming it and its position."""
    def one(m: re.Match) -> str:
        code = m.group(1)
        if code in SIMPLE_ESCAPES:
            return SIMPLE_ESCAPES[code]
        if len(code) > 1:                                            # \xHH, \uHHHH, \UHHHHHHHH
            point = int(code[1:], 16)
            if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF:
                return chr(point)
        raise UsageError(f"{option} {text!r}: malformed escape {m.group(0)!r} at position {m.start()} (use \\n, \\t, "
                         f"\\\\, \\xHH or \\uHHHH)")
    return ESCAPE.sub(one, text)


def cmd_sample(args: argparse.Namespace) -> int:
    try:
        return _sample(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE


def _sample(args: argparse.Namespace) -> int:
    import torch

    from minillm.generation import generate_text
    from minillm.training import CheckpointError, load_model, pick_device

    path = Path(args.checkpoint) if args.checkpoint else Path(args.out) / "checkpoint.pt"
    prompt = decode_escapes(args.prompt) if args.escapes else args.prompt
    try:
        device = pick_device(args.device, verbose=False)
    except ValueError as e:
        raise UsageError(f"--device {args.device}: {e}") from None
    try:
        model, tokenizer = load_model(path, device=device)
    except CheckpointError as e:
        raise UsageError(str(e)) from None
    if tokenizer is None:
        raise UsageError(f"{path} holds no tokenizer, so its ids cannot be turned into text")
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    try:
        for i in range(args.num_samples):
            text = generate_text(model, tokenizer, prompt, args.tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, generator=generator)
            print(text if args.num_samples == 1 else f"--- sample {i + 1} ---\n{text}")
    except ValueError as e:
        raise UsageError(f"--prompt {prompt!r}: {e}" if "prompt" not in str(e) else str(e)) from None
    return 0


# ---- the parser ---------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, with its errors on one line (no usage block): "error: argument --seed: ..."."""

    def error(self, message):
        self.exit(EXIT_USAGE, f"error: argument {message.removeprefix('argument ')} (see {self.prog} --help)\n"
                  if message.startswith("argument ") else f"error: {message} (see {self.prog} --help)\n")


class _HelpWithDefaults(argparse.HelpFormatter):
    """Adds "(default: ...)" to an option's help, unless the help already says its default."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" not in text and action.default not in (None, False, argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _positive_int(text: str) -> int:
    value = _int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _seed(text: str) -> int:
    value = _int(text)
    if not 0 <= value <= 2**32 - 1:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {2**32 - 1}, got {value}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def _temperature(text: str) -> float:
    value = _float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 (0 means greedy), got {value}")
    return value


def _top_p(text: str) -> float:
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {value}")
    return value


OPTION_TYPES = {int: _int, float: _float, str: str, None: _seed}


def main(argv=None) -> int:
    parser = _Parser(prog="python -m minillm", description="minillm: a GPT built from scratch in twenty lessons.")
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
                                   "optimizer, step, tokenizer, RNG states; checksummed), best.pt (the weights with the "
                                   "lowest validation loss), loss.csv, loss.png, samples.txt and run.json (the text's "
                                   "SHA-256 and every setting). Ctrl-C or SIGTERM stops after the current step and "
                                   "saves; --resume continues exactly. A loss that turns nan stops the run and keeps "
                                   "the last good checkpoint. One run at a time per --out: a second one is refused. "
                                   "Under torchrun it trains with DistributedDataParallel, one process per GPU.",
                       epilog="Exit status: 0 finished; 1 the training diverged (or a write failed); 2 a mistake in "
                              "the input (an option, the text, the run directory); 130 stopped by Ctrl-C; 143 stopped "
                              "by SIGTERM (both resumable with --resume).")
    p.add_argument("--data", metavar="FILE", help="a UTF-8 text file to train on (default: Tiny Shakespeare)")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default=None,
                   help="char: one token per character; bpe: byte-level BPE trained on the text (lesson 02) "
                        "(default: char)")
    p.add_argument("--vocab-size", type=_positive_int, default=None,
                   help="vocabulary size of the BPE tokenizer, at least 256 (default: 512)")
    p.add_argument("--out", metavar="DIR", help="run directory (default: runs/<name of the text>)")
    p.add_argument("--preset", choices=["auto", "gpu", "cpu", "quick"], default=None,
                   help="sizes: auto picks gpu on a CUDA GPU, cpu elsewhere, quick under MINILLM_QUICK=1 "
                        "(default: auto)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoint, on the same text; of the options below it "
                        "accepts only --max-steps, --eval-interval, --eval-iters, --sample-interval, --compile and "
                        "--device, and refuses any other that differs from the run's")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N or mps")
    p.add_argument("--val-fraction", type=_float, default=None,
                   help="the share of the text, at its end, kept for validation (default: 0.1)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (default: on with the gpu preset, off otherwise)")
    group = p.add_argument_group("model (overrides the preset)")
    for option, (field, kind, text) in MODEL_OPTIONS.items():
        group.add_argument(option, dest=field, type=OPTION_TYPES[kind], default=None,
                           help=f"{text} (default: from the preset)")
    group = p.add_argument_group("training (overrides the preset)")
    for option, (field, kind, text) in TRAIN_OPTIONS.items():
        group.add_argument(option, dest=field, type=OPTION_TYPES[kind], default=None,
                           help=f"{text} (default: from the preset)")
    p.set_defaults(run=cmd_train)

    p = sub.add_parser("sample", help="write text with a trained model",
                       formatter_class=_HelpWithDefaults,
                       description="Continue a prompt with the model saved by `python -m minillm train`.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", default="runs/tinyshakespeare", help="the run directory to sample from")
    where.add_argument("--checkpoint", metavar="FILE", help="a checkpoint file, instead of --out (OUT/best.pt, say)")
    p.add_argument("--prompt", default="\n", help="the text to continue (default: a newline)")
    p.add_argument("--escapes", action="store_true",
                   help="read Python's backslash escapes in --prompt: \\n a newline, \\t a tab, \\uHHHH a character")
    p.add_argument("--tokens", type=_positive_int, default=500, help="how many tokens to write")
    p.add_argument("--num-samples", type=_positive_int, default=1, help="how many samples")
    p.add_argument("--temperature", type=_temperature, default=0.8,
                   help="below 1: safer, above 1: wilder; 0 (or below 1e-5): greedy")
    p.add_argument("--top-k", type=_positive_int, default=None, help="draw only from the k likeliest tokens")
    p.add_argument("--top-p", type=_top_p, default=None,
                   help="draw only from the smallest set holding this much probability")
    p.add_argument("--seed", type=_seed, default=None, help="a seed for a repeatable sample")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.set_defaults(run=cmd_sample)

    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
