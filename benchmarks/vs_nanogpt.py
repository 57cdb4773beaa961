"""minillm's CPU preset against nanoGPT's own train.py, side by side on one machine. Prints figures.

    python benchmarks/vs_nanogpt.py --nanogpt DIR [--rounds 1] [--threads 1] [--also "OPTIONS"]...
                                    [--keep LOGDIR] [-- MORE MINILLM OPTIONS]

DIR is a checkout of https://github.com/karpathy/nanoGPT (not a dependency of minillm; without
--nanogpt this script says so and exits). In a temporary folder it writes nanoGPT's character
data (data/shakespeare_char/{train,val}.bin, meta.pkl: what its prepare.py makes, from minillm's
local copy of Tiny Shakespeare, so nothing is downloaded) and runs, alternately (A B B A per
round), two child processes:

    A  nanoGPT: python train.py config/train_shakespeare_char.py with its README's "baby" CPU
       options (4 layers, 4 heads, 128 wide, context 64, batch 12, 2000 steps, no dropout),
       --eval_iters=20 --log_interval=50, wandb off
    B  minillm: python -m minillm train --preset cpu --sample-interval 0, with --val-fraction set
       so that it validates on exactly nanoGPT's text (the last 111,540 characters), plus any
       options given after "--"; each --also "OPTIONS" adds another minillm run (C, D, ...) with
       those options, and the round becomes A B C .. C B A

Each child's stdout is read line by line and stamped with the seconds since the child started;
both print their loss estimates as "step N: train loss X, val loss Y". The target of a minillm
run is the final validation loss of the nanoGPT run in its half of the round; the table gives each run's wall time (process
start to exit), the time at which its estimates first reach the target, counted from process
start and from its first estimate (step 0: imports, data and model set-up left out), and the
ratio minillm / nanoGPT of the times from process start. OMP_NUM_THREADS (--threads) is the
same for both. The two sides estimate the loss differently (nanoGPT: 20 fresh random batches
per split; minillm: the preset's 50 fixed batches), so the time to a target carries the noise
of both estimates: run more rounds when in doubt.
"""
import argparse
import os
import pickle
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ESTIMATE = re.compile(r"^step\s+(\d+): train loss ([0-9.]+|nan|inf), val loss ([0-9.]+|nan|inf)")
NANOGPT_OPTIONS = ["config/train_shakespeare_char.py", "--device=cpu", "--compile=False", "--eval_iters=20",
                   "--log_interval=50", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                   "--n_embd=128", "--max_iters=2000", "--lr_decay_iters=2000", "--dropout=0.0", "--wandb_log=False"]
NANOGPT_FILES = ["train.py", "model.py", "configurator.py", "config/train_shakespeare_char.py"]


def prepare_nanogpt(nanogpt: Path, work: Path, text: str) -> float:
    """nanoGPT's files and its shakespeare_char data in work; returns minillm's --val-fraction
    that puts the split where nanoGPT's prepare.py puts it."""
    import numpy as np

    from minillm.tokenizer import CharTokenizer

    for name in NANOGPT_FILES:
        if not (nanogpt / name).is_file():
            sys.exit(f"error: --nanogpt {nanogpt}: no {name} there; give a checkout of karpathy/nanoGPT")
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(nanogpt / name, work / name)
    # as data/shakespeare_char/prepare.py: sorted characters, the first 90% for training, uint16 ids
    chars = sorted(set(text))
    stoi, itos = {c: i for i, c in enumerate(chars)}, dict(enumerate(chars))
    n = len(text)
    n_train = int(n * 0.9)
    data = work / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    np.array([stoi[c] for c in text[:n_train]], dtype=np.uint16).tofile(data / "train.bin")
    np.array([stoi[c] for c in text[n_train:]], dtype=np.uint16).tofile(data / "val.bin")
    with open(data / "meta.pkl", "wb") as f:
        pickle.dump({"vocab_size": len(chars), "itos": itos, "stoi": stoi}, f)
    # minillm: the same ids (CharTokenizer is the sorted set too) and a split at the same place:
    # train_val_split keeps int(round(n * (1 - val_fraction))) for training
    if CharTokenizer(text).chars != chars:
        sys.exit("error: minillm's character vocabulary differs from nanoGPT's (sorted set of characters)")
    val_fraction = 1 - n_train / n
    if int(round(n * (1.0 - val_fraction))) != n_train:
        sys.exit(f"error: no --val-fraction found that splits {n} characters at {n_train}")
    print(f"data: {n:,} characters, vocabulary {len(chars)}; both train on the first {n_train:,} and validate on "
          f"the last {n - n_train:,} (nanoGPT's prepare.py split; minillm --val-fraction {val_fraction!r})")
    return val_fraction


def run_child(label: str, command: list, cwd: Path, env: dict, log: Path) -> dict:
    """Run command, stamping each stdout line; returns the wall time and the loss estimates
    [(seconds since start, step, train loss, val loss)]."""
    estimates = []
    t0 = time.perf_counter()
    with open(log, "w", buffering=1) as out, open(log.with_suffix(".err"), "w") as err:
        child = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=err, text=True, bufsize=1)
        try:
            for line in child.stdout:
                t = time.perf_counter() - t0
                out.write(f"{t:8.2f} {line}")
                m = ESTIMATE.match(line.strip())
                if m:
                    estimates.append((t, int(m.group(1)), float(m.group(2)), float(m.group(3))))
            rc = child.wait()
        except BaseException:
            child.send_signal(signal.SIGTERM)
            child.wait()
            raise
    wall = time.perf_counter() - t0
    if rc != 0:
        last = log.with_suffix(".err").read_text(errors="replace").replace("\r", "\n").strip().splitlines()[-5:]
        sys.exit(f"error: {label} exited with status {rc}; the end of its stderr:\n" + "\n".join(last))
    if not estimates:
        sys.exit(f"error: {label} printed no loss estimate; see {log}")
    return {"label": label, "wall": wall, "estimates": estimates}


def reached(run: dict, target: float):
    """(seconds from process start, seconds from the step-0 estimate, step) of the first
    estimate at or below target, or None."""
    first = run["estimates"][0][0]
    for t, step, _, val in run["estimates"]:
        if val <= target:
            return t, t - first, step
    return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nanogpt", metavar="DIR", help="a checkout of karpathy/nanoGPT")
    parser.add_argument("--rounds", type=int, default=1, help="rounds of A B B A (two runs of each per round)")
    parser.add_argument("--threads", type=int, default=1, help="OMP_NUM_THREADS for both")
    parser.add_argument("--also", metavar="OPTIONS", action="append", default=[],
                        help="another minillm run in each round, with these options added (quoted; repeatable): "
                             "the round becomes A B C .. C B A")
    parser.add_argument("--keep", metavar="DIR", help="keep the logs (stdout, each line stamped) in DIR")
    parser.add_argument("minillm_options", nargs="*", help="after --: more options for `python -m minillm train`")
    args = parser.parse_args()
    if not args.nanogpt:
        print("skipped: no nanoGPT checkout given (--nanogpt DIR; git clone https://github.com/karpathy/nanoGPT)")
        return 0
    nanogpt = Path(args.nanogpt).resolve()
    if args.rounds < 1 or args.threads < 1:
        sys.exit("error: --rounds and --threads must be at least 1")

    import torch

    from minillm.corpus import tiny_shakespeare

    work = Path(tempfile.mkdtemp(prefix="vs_nanogpt_"))
    logs = Path(args.keep) if args.keep else work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    try:
        val_fraction = prepare_nanogpt(nanogpt, work, tiny_shakespeare())
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
               "PYTHONUNBUFFERED": "1", "WANDB_MODE": "disabled"}
        repo = Path(__file__).resolve().parent.parent
        nano_cmd = [sys.executable, "train.py", *NANOGPT_OPTIONS]
        mini_cmd = [sys.executable, "-m", "minillm", "train", "--preset", "cpu", "--sample-interval", "0", "--device",
                    "cpu", "--val-fraction", repr(val_fraction)]
        variants = {"B": list(args.minillm_options)}
        for i, options in enumerate(args.also):
            variants[chr(ord("C") + i)] = shlex.split(options)
        print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}, "
              f"OMP_NUM_THREADS={args.threads}; load average {os.getloadavg()[0]:.2f} at the start")
        print(f"A: nanoGPT: python train.py {' '.join(NANOGPT_OPTIONS)}")
        for kind, options in variants.items():
            print(f"{kind}: minillm: python -m minillm train --preset cpu --sample-interval 0 --device cpu --val-fraction "
                  f"{val_fraction!r} {' '.join(options)}".rstrip())
        pairs, count = [], 0

        def one(kind: str) -> dict:
            nonlocal count
            count += 1
            if kind == "A":
                shutil.rmtree(work / "out-shakespeare-char", ignore_errors=True)
                run = run_child("nanoGPT", nano_cmd, work, env, logs / f"{count:02d}_A_nanogpt.log")
            else:
                out = work / f"minillm_{count:02d}"
                run = run_child("minillm", [*mini_cmd, *variants[kind], "--out", str(out)], repo, env,
                                logs / f"{count:02d}_{kind}_minillm.log")
                shutil.rmtree(out, ignore_errors=True)
            run["kind"] = kind
            t, step, _, val = run["estimates"][-1]
            print(f"  run {count} {kind} {run['label']:<8} wall {run['wall']:6.1f} s, final val {val:.4f} at step "
                  f"{step} ({t:.1f} s); load average {os.getloadavg()[0]:.2f}", flush=True)
            return run

        for _ in range(args.rounds):                            # A B C .. C B A: a drift in load hits both halves
            a1 = one("A")
            first = [one(kind) for kind in variants]
            second = [one(kind) for kind in reversed(variants)]
            a2 = one("A")
            pairs += [(a1, b) for b in first] + [(a2, b) for b in second]

        print("\n| run | nanoGPT wall | nanoGPT final val (the target) | nanoGPT reaches it | minillm wall | "
              "minillm final val | minillm reaches it | ratio from process start | ratio from step 0 |")
        print("|---|---|---|---|---|---|---|---|---|")
        ratios = {kind: ([], []) for kind in variants}
        cell = lambda r: f"step {r[2]}, {r[0]:.1f} s ({r[1]:.1f} s after step 0)" if r else "not reached"
        for a, b in pairs:
            target = a["estimates"][-1][3]
            ra, rb = reached(a, target), reached(b, target)
            ratio = ratio0 = None
            if ra and rb:
                ratio, ratio0 = rb[0] / ra[0], rb[1] / ra[1]
                ratios[b["kind"]][0].append(ratio), ratios[b["kind"]][1].append(ratio0)
            print(f"| {b['kind']} | {a['wall']:.1f} s | {target:.4f} | {cell(ra)} | {b['wall']:.1f} s | "
                  f"{b['estimates'][-1][3]:.4f} (step {b['estimates'][-1][1]}) | {cell(rb)} | "
                  f"{f'{ratio:.2f}' if ratio else '-'} | {f'{ratio0:.2f}' if ratio0 else '-'} |")
        print()
        for kind, (r, r0) in ratios.items():
            if r:
                print(f"{kind}: minillm's time to nanoGPT's final validation loss / nanoGPT's time to it: median "
                      f"{statistics.median(r):.2f} from process start ({', '.join(f'{x:.2f}' for x in r)}), "
                      f"{statistics.median(r0):.2f} from the first loss estimate")
            else:
                print(f"{kind}: never reached nanoGPT's final validation loss")
        print(f"load average at the end {os.getloadavg()[0]:.2f}" + (f"; logs in {logs}" if args.keep else ""))
    finally:
        shutil.rmtree(work, ignore_errors=True)                  # the logs stay if --keep put them elsewhere
    return 0


if __name__ == "__main__":
    sys.exit(main())
