"""The command line: `python -m minillm <command>`; `python -m minillm --help` lists them.

    python -m minillm data                     get Tiny Shakespeare into the cache
    python -m minillm train [options]          train a GPT (lesson 20), on Tiny Shakespeare or --data FILE
    python -m minillm sample --out RUN_DIR     write text with a trained model

Every mistake in the input (an option, a file, a run directory) is one line on stderr that names
the option and the value, and exit status 2. A run that diverges exits with 1, one stopped by
Ctrl-C with 130 and one stopped by SIGTERM with 143, so that scripts can tell them from a finished one.
"""
import argparse
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
    # the parts of later model families (lesson 21); each defaults to GPT-2's, and GPTConfig checks them
    "--norm": ("norm", ("layernorm", "rmsnorm"), "layernorm (GPT-2) or rmsnorm (Llama, Qwen2) (default: layernorm)"),
    "--position": ("position", ("learned", "rope"),
                   "learned: a position table (GPT-2); rope: rotary positions inside attention (Llama, Qwen2) (default: learned)"),
    "--rope-theta": ("rope_theta", float, "the rotary base, with --position rope (default: 10000)"),
    "--mlp": ("mlp", ("gelu", "gelu_exact", "swiglu"), "gelu (tanh approximation, GPT-2), gelu_exact or swiglu (Llama) (default: gelu)"),
    "--mlp-hidden": ("mlp_hidden", int, "the MLP's hidden width (default: 4 x --n-embd, or 8/3 x for swiglu)"),
    "--n-kv-head": ("n_kv_head", int, "key/value heads, a divisor of --n-head: grouped-query attention; 1 is "
                                      "multi-query (default: --n-head, multi-head)"),
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


def _scan_text(path: Path, option: str = "--data"):
    """One streaming pass over the text file (lesson 20's scan_text): its SHA-256, size and
    characters; UsageError if it is missing, not a file, unreadable, not UTF-8 or empty."""
    from minillm.training import scan_text

    try:
        if path.exists() and not path.is_file():
            kind = "a directory" if path.is_dir() else "not a regular file (a pipe or a device?)"
            raise UsageError(f"{option} {path} is {kind}; give a UTF-8 text file")
        return scan_text(path, progress=True)
    except FileNotFoundError:
        raise UsageError(f"{option} {path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{option} {path} cannot be read: {e.strerror or e}") from None
    except ValueError as e:                                 # "not UTF-8 text (... at byte N)", "empty"
        raise UsageError(f"{option} {path} is {e}") from None


def _corpus(data, option: str = "--data") -> tuple:
    """(path, TextScan, name) of --data, or of Tiny Shakespeare when --data is not given."""
    if data is None:
        from minillm.corpus import CorpusError, corpus_path
        try:
            path = corpus_path()
        except CorpusError as e:
            raise UsageError(str(e)) from None
        return path, _scan_text(path, "Tiny Shakespeare"), "tinyshakespeare"
    return Path(data), _scan_text(Path(data), option), Path(data).stem


def _is_file(path: Path, option: str) -> bool:
    try:
        return path.is_file()
    except OSError as e:                                   # a name too long, say
        raise UsageError(f"{option} {path}: {e.strerror or e}") from None


def _check_out(out: Path) -> None:
    """--out must be a folder this process can create and write in (checked without leaving a file)."""
    try:
        if out.exists() and not out.is_dir():
            raise UsageError(f"--out {out} is a file, not a directory")
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write there ({e.strerror or e})") from None


RUN_FIELDS = {   # what run.json must hold for --resume to check a run: field -> (types, what)
    "data": ((str, type(None)), "a path or null"),
    "data_sha256": ((str, type(None)), "a SHA-256 or null"),
    "tokenizer": ((str,), "'char' or 'bpe'"),
    "val_fraction": ((float,), "a number between 0 and 1"),
}


def _read_run(out: Path) -> dict:
    path = out / RUN_FILE
    if not _is_file(path, "--out"):
        raise UsageError(f"--out {out} has no {RUN_FILE}, so --resume cannot check that it continues the same run "
                         f"(was it made by `python -m minillm train`?); continue it in Python with Trainer.resume")
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        reason = e.msg if isinstance(e, json.JSONDecodeError) else getattr(e, "reason", None) or type(e).__name__
        raise UsageError(f"{path} is damaged ({reason}), so --resume cannot check that it continues the same "
                         f"run; restore it, or start a new run") from None
    if not isinstance(run, dict):
        raise UsageError(f"{path} is damaged (it holds a {type(run).__name__}, not a record of the run)")
    run.setdefault("val_fraction", 0.1)                    # runs.json of version 0.1.0 had no val_fraction
    for field, (types, what) in RUN_FIELDS.items():
        if field == "data_sha256" and field not in run:
            continue                                       # nor a SHA-256: it is not checked then
        if field not in run:
            raise UsageError(f"{path} is damaged: it has no {field!r}")
        value = run[field]
        if isinstance(value, bool) or not isinstance(value, types + ((int,) if float in types else ())):
            raise UsageError(f"{path} is damaged: {field!r} must be {what}, got {value!r}")
    if run["tokenizer"] not in ("char", "bpe") or not 0 < run["val_fraction"] < 1:
        raise UsageError(f"{path} is damaged: tokenizer {run['tokenizer']!r}, val_fraction {run['val_fraction']!r}")
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
    requested_vocab = run.get("vocab_size_requested", run.get("vocab_size"))
    for option, value, has in (("--tokenizer", args.tokenizer, run.get("tokenizer")),
                               ("--vocab-size", args.vocab_size, requested_vocab),
                               ("--val-fraction", args.val_fraction, run.get("val_fraction")),
                               ("--bpe-sample-mb", args.bpe_sample_mb, run.get("bpe_sample_mb")),
                               ("--preset", args.preset, run.get("preset"))):
        if value is not None and has is not None and has != value:
            refused.append(f"{option} {value} (the run has {has})")
    return changes, refused


def _memory_error(e: BaseException) -> bool:
    text = str(e)
    return isinstance(e, (MemoryError, OverflowError)) or (
        isinstance(e, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text))


def cmd_train(args: argparse.Namespace) -> int:
    try:
        return _train(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (MemoryError, OverflowError, RuntimeError) as e:
        if not _memory_error(e):
            raise
        sizes = " ".join(f"{option} {getattr(args, field)}" for option, (field, _, _) in
                         {**MODEL_OPTIONS, **TRAIN_OPTIONS}.items() if field in SIZE_FIELDS and
                         getattr(args, field) is not None)
        first = (str(e).strip().splitlines() or ["too large"])[0][:120]
        print(f"error: the model or the batch does not fit in memory ({type(e).__name__}: {first}); choose "
              f"smaller sizes{' than ' + sizes if sizes else ''}", file=sys.stderr)
        return EXIT_USAGE


SIZE_FIELDS = ("n_layer", "n_embd", "n_head", "block_size", "batch_size", "grad_accum_steps")


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:
        return False


def _remove_if_unused(out: Path) -> None:
    """A run refused before its first checkpoint leaves nothing behind: the folder this command
    made (and still holds the lock of) goes again, with run.json in it; never a folder that
    holds a checkpoint."""
    import shutil
    try:
        if out.is_dir() and not (out / "checkpoint.pt").exists():
            shutil.rmtree(out)
    except OSError:
        pass


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
        checkpoint = out / "checkpoint.pt"
        if not _is_file(checkpoint, "--out"):
            what = "is not a file" if _exists(checkpoint) else "does not exist"
            raise UsageError(f"--resume: {checkpoint} {what}: there is no checkpoint to continue")
        run = _read_run(out)
        if args.data is None and run["data"] is not None and not _exists(Path(run["data"])):
            raise UsageError(f"the run's text {run['data']} (recorded in {out / RUN_FILE}) is gone; give it "
                             f"with --data")
        data = args.data if args.data is not None else run["data"]   # the run's own text, unless given
        path, scan, name = _corpus(data, "--data" if args.data is not None else f"the run's text (from {RUN_FILE})")
        digest = scan.sha256
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
        if args.bpe_sample_mb is not None and args.bpe_sample_mb < 0:
            raise UsageError(f"--bpe-sample-mb {args.bpe_sample_mb}: must be 0 (the whole text) or more")
        configs = _configs(args)                          # checked before anything is read or made on disk
        path, scan, name = _corpus(args.data)
        out = Path(args.out) if args.out else Path("runs") / name
    lock = None
    created = not _exists(out)
    if master:                                        # under torchrun, process 0 writes, so it alone locks
        _check_out(out)
        try:
            lock = RunLock(out).acquire()
        except RunDirectoryLocked as e:
            raise UsageError(str(e)) from None
        except OSError as e:                          # OUT/.lock is a folder, say
            raise UsageError(f"--out {out}: cannot lock it ({e.strerror or e} on {out / '.lock'})") from None
    try:
        return _train_locked(args, out, path, scan, name, master, run, configs)
    except BaseException as e:
        if lock is not None and created and (isinstance(e, UsageError) or _memory_error(e)):
            _remove_if_unused(out)                    # refused before its first checkpoint: leave nothing
        raise
    finally:
        if lock is not None:
            lock.release()


def _configs(args) -> tuple:
    """(GPTConfig, TrainConfig) of the preset with the options given; UsageError names a bad one.
    The GPTConfig's vocab_size is a placeholder until the tokenizer is trained."""
    import dataclasses

    from minillm.training import autocast_dtype, pick_device, preset

    try:
        model_config, train_config = preset(args.preset or "auto", 1)
        model_config = dataclasses.replace(model_config, **_given(args, [f for f, _, _ in MODEL_OPTIONS.values()]))
        changes = _given(args, [f for f, _, _ in TRAIN_OPTIONS.values()])
        if args.compile is not None:
            changes["compile"] = args.compile
        train_config = dataclasses.replace(train_config, **changes)
        autocast_dtype(pick_device(args.device, verbose=False), train_config.precision)   # bf16 on a CPU: no
        return model_config, train_config
    except (TypeError, ValueError) as e:
        raise UsageError(_option_message(e)) from None


def _split(ids, val_fraction: float, block_size: int, what: str):
    """The train/validation split, or UsageError if either part is too short for one window."""
    from minillm.corpus import train_val_split
    n = len(ids)
    n_val = int(n * val_fraction) if 0 < val_fraction < 1 else 0
    if min(n_val, n - n_val) <= block_size:
        raise UsageError(f"{what} gives {n:,} tokens: too few for a validation split of {val_fraction} with "
                         f"--block-size {block_size} (each part needs more than {block_size}); use a longer text, a "
                         f"smaller --block-size or another --val-fraction")
    return train_val_split(ids, val_fraction)


def _tokens(path: Path, tokenizer, out: Path, scan, master: bool):
    """The text's ids under tokenizer, a numpy.memmap of its token file in the run directory
    (lesson 20's token_file: found again and checked, or encoded now). Under torchrun process
    0 writes it and the others wait for it (torchrun stops them all if process 0 fails)."""
    import time

    from minillm.training import TokenFileError, read_token_file, token_file, token_file_path

    try:
        if master:
            return token_file(path, tokenizer, out, scan.sha256)
        while True:
            try:
                return read_token_file(token_file_path(out, scan.sha256, tokenizer), scan.sha256, tokenizer)
            except TokenFileError:
                time.sleep(1)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot write the token file ({e.strerror or e})") from None


def _train_locked(args, out: Path, path: Path, scan, name: str, master: bool, run: dict | None, configs) -> int:
    """The training run, with the run directory locked (by process 0)."""
    import dataclasses

    import torch

    from minillm.corpus import atomic_write_bytes
    from minillm.model import GPT
    from minillm.tokenizer import CharTokenizer, tokenizer_from_dict
    from minillm.training import BPE_SAMPLE_BYTES, CheckpointError, Trainer, TrainingDiverged, load_checkpoint, \
        plot_losses, remove_stale_parts, train_bpe

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
        step = ckpt.get("step", 0)
        if "max_steps" in changes and changes["max_steps"] < step:
            raise UsageError(f"--max-steps {changes['max_steps']}: the run is already at step {step}")
        try:
            tokenizer = tokenizer_from_dict(ckpt["tokenizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(f"{checkpoint}: its tokenizer does not load: {e}") from None
        try:
            ids = _tokens(path, tokenizer, out, scan, master)
        except ValueError as e:
            raise UsageError(f"the text does not fit this run's tokenizer, so it is not the run's text: {e}") from None
        train_ids, val_ids = _split(ids, run["val_fraction"], ckpt["model_config"]["block_size"], "the text")
        try:
            trainer = Trainer.resume(checkpoint, train_ids, val_ids, run_dir=out, device=args.device, ckpt=ckpt,
                                     changes=changes)
        except CheckpointError as e:
            raise UsageError(str(e)) from None
        except (KeyError, TypeError, ValueError) as e:
            raise UsageError(_option_message(e)) from None
        for field, value in changes.items():
            print(f"note: {OPTION_OF[field]} {value} applied (the run had {ckpt['train_config'].get(field)})")
        if run.get("data_sha256") is None:
            print(f"note: {out / RUN_FILE} records no SHA-256 of the text, so it could not be checked")
        print(f"Resuming {checkpoint} at step {trainer.step} of {trainer.config.max_steps} on "
              f"{trainer.device}")
    else:
        if _exists(checkpoint):
            raise UsageError(f"--out {out} already holds a checkpoint; continue it with --resume, or choose another "
                             f"--out (nothing was overwritten)")
        vocab_size = args.vocab_size if args.vocab_size is not None else 512
        val_fraction = args.val_fraction if args.val_fraction is not None else 0.1
        model_config, train_config = configs
        kind = args.tokenizer or "char"
        sample_mb = args.bpe_sample_mb if args.bpe_sample_mb is not None else BPE_SAMPLE_BYTES // 2**20
        if kind == "char":
            tokenizer = CharTokenizer(scan.chars)              # the text's characters, from the pass that hashed it
        else:
            tokenizer = train_bpe(path, vocab_size, sample_mb * 2**20)
            if sample_mb and scan.n_bytes > sample_mb * 2**20:
                print(f"note: the BPE tokenizer was trained on the first {sample_mb} MB of the text's "
                      f"{scan.n_bytes / 2**20:,.0f} MB (--bpe-sample-mb)")
            if tokenizer.vocab_size < vocab_size:
                print(f"note: --vocab-size {vocab_size}: this text has no more pairs to merge after "
                      f"{tokenizer.vocab_size - 256} merges, so the vocabulary has {tokenizer.vocab_size} tokens")
        ids = _tokens(path, tokenizer, out, scan, master)
        model_config = dataclasses.replace(model_config, vocab_size=tokenizer.vocab_size)
        train_ids, val_ids = _split(ids, val_fraction, model_config.block_size, f"--data {args.data or name}")
        print(f"{name}: {scan.n_chars:,} characters -> {len(ids):,} tokens ({type(tokenizer).__name__}, "
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
            run = {"data": str(Path(args.data).resolve()) if args.data else None, "data_sha256": scan.sha256,
                   "tokenizer": kind, "vocab_size": tokenizer.vocab_size if kind == "bpe" else None,
                   "vocab_size_requested": vocab_size if kind == "bpe" else None,
                   "bpe_sample_mb": sample_mb if kind == "bpe" else None,
                   "val_fraction": val_fraction, "preset": args.preset or "auto",
                   "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config),
                   "command": sys.argv[1:]}
            try:
                atomic_write_bytes(out / RUN_FILE, json.dumps(run, indent=2).encode("utf-8"))
            except OSError as e:
                raise UsageError(f"--out {out}: cannot write {RUN_FILE} ({e.strerror or e})") from None
    start_step = trainer.step
    try:
        history = trainer.fit()
        stopped = trainer.step < trainer.config.max_steps
        if master and history:
            plot_losses(history, path=out / "loss.png", title=name)
            last = history[-1]
            print(f"step {last['step']}: train loss {last['train_loss']:.4f}, validation loss "
                  f"{last['val_loss']:.4f}" + (f", {trainer.tokens_per_second:,.0f} tokens/s"
                                                if trainer.tokens_per_second else ""))
            sampled_now = any(step == trainer.step for step, _ in trainer.samples)
            if not stopped and trainer.step > start_step and not sampled_now:
                sample = trainer.sample(max_new_tokens=300)
                if sample is not None:
                    trainer.record_sample(sample)
                    print(f"--- sample ---\n{sample}\n---")
            files = [f for f in ("checkpoint.pt", "best.pt", "loss.csv", "loss.png", "samples.txt")
                     if (out / f).exists()]
            print(f"run directory: {out} ({', '.join(files)})")
            print(f"sample more:   python -m minillm sample --out {out}")
    except TrainingDiverged as e:
        print(f"error: {e}", file=sys.stderr)
        trainer.close()
        return EXIT_FAILED
    except OSError as e:
        print(f"error: writing to {out} failed: {e}; the last checkpoint written is kept", file=sys.stderr)
        trainer.close()
        return EXIT_FAILED
    stop_signal = trainer.stop_signal
    trainer.close()
    if stop_signal is not None:
        return 128 + int(stop_signal)                                # 130 for Ctrl-C, 143 for SIGTERM
    return 0


# ---- sample -------------------------------------------------------------------------------

SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a", "b": "\b",
                  "f": "\f", "v": "\v"}
ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8}|[0-7]{1,3}|N\{[^}]*\}|.|$)", re.DOTALL)


def decode_escapes(text: str, option: str = "--prompt") -> str:
    """The backslash escapes of a Python string literal in text (\\n, \\t, \\r, \\\\, \\', \\",
    \\a, \\b, \\f, \\v, octal \\0 to \\377, \\xHH, \\uHHHH, \\UHHHHHHHH, \\N{NAME}) turned into the
    characters they name; every other character, "café" too, stays as it is (no detour
    through Latin-1). A malformed escape raises UsageError naming it and its position."""
    import unicodedata

    def one(m: re.Match) -> str:
        code = m.group(1)
        if code in SIMPLE_ESCAPES:
            return SIMPLE_ESCAPES[code]
        if code[:1] in "01234567" and code:                          # octal, as Python: at most \377
            if int(code, 8) <= 0o377:
                return chr(int(code, 8))
        elif code.startswith("N{") and code.endswith("}"):           # \N{LATIN SMALL LETTER E WITH ACUTE}
            try:
                return unicodedata.lookup(code[2:-1])
            except KeyError:
                pass
        elif len(code) > 1:                                          # \xHH, \uHHHH, \UHHHHHHHH
            point = int(code[1:], 16)
            if point <= 0x10FFFF and not 0xD800 <= point <= 0xDFFF:
                return chr(point)
        raise UsageError(f"{option} {text!r}: malformed escape {m.group(0)!r} at position {m.start()} (use \\n, \\t, "
                         f"\\\\, \\xHH, \\uHHHH or \\N{{NAME}})")
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

    if args.checkpoint is not None:
        if not args.checkpoint.strip():
            raise UsageError(f"--checkpoint {args.checkpoint!r}: give the path of a checkpoint file")
        path, option = Path(args.checkpoint), "--checkpoint"
    else:
        path, option = Path(args.out) / "checkpoint.pt", "--out"
    prompt = decode_escapes(args.prompt) if args.escapes and args.prompt is not None else args.prompt
    try:
        device = pick_device(args.device, verbose=False)
    except ValueError as e:
        raise UsageError(f"--device {args.device}: {e}") from None
    try:
        model, tokenizer = load_model(path, device=device)
    except CheckpointError as e:
        raise UsageError(f"{option}: {e}") from None
    if tokenizer is None:
        raise UsageError(f"{option}: {path} holds no tokenizer, so its ids cannot be turned into text")
    if prompt is None:                          # a newline, or the first token of a text without newlines
        try:
            prompt = "\n" if tokenizer.encode("\n") else tokenizer.decode([0])
        except ValueError:
            prompt = tokenizer.decode([0])
    generator = torch.Generator(device=device).manual_seed(args.seed) if args.seed is not None else None
    try:
        for i in range(args.num_samples):
            text = generate_text(model, tokenizer, prompt, args.tokens, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p, generator=generator)
            print(text if args.num_samples == 1 else f"--- sample {i + 1} ---\n{text}")
    except ValueError as e:
        raise UsageError(f"--prompt {prompt!r}: {e}") from None
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


def _checked(kind, ok, what: str):
    """An argparse type: the text as an int or a finite float, refused unless ok(value), with a
    message that says what it must be."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (kind is int or math.isfinite(value)) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text if kind is float else value}")
        return value
    return parse


_int = _checked(int, lambda v: abs(v) < 2**63, "below 2**63 (what a tensor's size can hold)")
_positive_int = _checked(int, lambda v: 1 <= v < 2**63, "at least 1 (and below 2**63)")
_seed = _checked(int, lambda v: 0 <= v <= 2**32 - 1, f"an integer from 0 to {2**32 - 1}")
_float = _checked(float, lambda v: True, "a finite number")
_temperature = _checked(float, lambda v: v >= 0, ">= 0 (0 means greedy)")
_top_p = _checked(float, lambda v: 0 < v <= 1, "in (0, 1]")


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
                                   "SHA-256 and every setting), and the text's ids in a token file (tokens.*.bin: "
                                   "encoded once, in parallel pieces, read from the disk while training, found again "
                                   "by --resume). Ctrl-C or SIGTERM stops after the current step and "
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
    p.add_argument("--bpe-sample-mb", type=_int, default=None, metavar="MB",
                   help="train the BPE tokenizer on the first MB megabytes of the text, 0 for all of it (default: 32)")
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
        choices = dict(choices=kind, type=str) if isinstance(kind, tuple) else dict(type=OPTION_TYPES[kind])
        group.add_argument(option, dest=field, default=None, **choices,
                           help=text if "default:" in text else f"{text} (default: from the preset)")
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
    p.add_argument("--prompt", default=None,
                   help="the text to continue (default: a newline, or the first token of a vocabulary without one)")
    p.add_argument("--escapes", action="store_true",
                   help="read the backslash escapes of a Python string in --prompt: \\n a newline, \\t a tab, "
                        "\\uHHHH or \\N{NAME} a character")
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
    try:
        return args.run(args)
    except KeyboardInterrupt:                      # Ctrl-C before training began, or a second one during it
        print("error: interrupted (Ctrl-C); a checkpoint is written only by the first Ctrl-C during training",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
