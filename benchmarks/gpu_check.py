"""The prepared GPU check: one command that proves lesson 20's GPU path on a CUDA machine.

    python benchmarks/gpu_check.py [--out DIR]     # `make gpu-check`: on a CUDA GPU (H200: under 8 minutes)
    python benchmarks/gpu_check.py --dry-run       # every step at toy size on the CPU: the rehearsal

Four steps, each a subprocess whose output goes to DIR/<step>.log (DIR defaults to
runs/gpu-check-<date>), and a table at the end:

1. tests    pytest -m gpu: a training step under bf16 autocast against fp32, fused AdamW against
            the unfused one, the compiled model against eager, KV-cache generation against none.
2. ttl      benchmarks/training.py time-to-loss --preset gpu --target 1.47 --compile: when the
            validation loss first reaches 1.47, in seconds of training steps (evaluation excluded,
            and reported apart).
3. speed    benchmarks/training.py throughput --preset gpu --compile: tokens/s and MFU.
4. lesson   notebooks/20_training.ipynb executed top to bottom with the GPU preset, saved as
            DIR/20_training.ipynb (its run directory lands in DIR/runs).

Nothing is downloaded: the corpus comes from the cache or MINILLM_DATA, as everywhere. The
dry run sets MINILLM_QUICK=1 and the CPU, so that every step runs in about a minute here; its
figures mean nothing, it proves that the command works.
"""
import argparse
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Executes lesson 20 in the output folder (so its run directory lands there), saves the executed
# notebook there, and prints the lines of its outputs that report the training run.
LESSON = """
import sys
from pathlib import Path
import nbformat
from nbclient import NotebookClient
source, out = Path(sys.argv[1]), Path(sys.argv[2])
nb = nbformat.read(source, as_version=4)
try:
    NotebookClient(nb, timeout=1800, kernel_name="python3", resources={"metadata": {"path": str(out)}}).execute()
finally:
    nbformat.write(nb, out / source.name)
for cell in nb.cells:
    for output in cell.get("outputs", []):
        for line in output.get("text", "").splitlines():
            if line.startswith(("Training on", "after ", "GPT-")):
                print(line)
"""


def steps(dry_run: bool, out: Path) -> list:
    """(name, command, timeout in seconds) of each step."""
    py = sys.executable
    if dry_run:
        device, compile_ = ["--device", "cpu"], []
        ttl = ["--preset", "quick", "--target", "4.0"]
        speed = ["--preset", "quick", "--steps", "2", "--rounds", "1"]
    else:
        device, compile_ = ["--device", "cuda"], ["--compile"]
        ttl = ["--preset", "gpu", "--target", "1.47"]
        speed = ["--preset", "gpu", "--steps", "20", "--rounds", "5"]
    return [
        ("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "tests/"], 180),
        ("ttl", [py, "benchmarks/training.py", "time-to-loss", *ttl, *device, *compile_], 300),
        ("speed", [py, "benchmarks/training.py", "throughput", *speed, *device, *compile_], 180),
        ("lesson", [py, "-c", LESSON, str(ROOT / "notebooks" / "20_training.ipynb"), str(out)], 420),
    ]


def figure(name: str, log: str) -> str:
    """The line of a step's log that the table shows."""
    patterns = {
        "tests": r"(\d+ passed[^=\n]*)",
        "ttl": r"(val <= [\d.]+ at step \d+ after [\d.]+ s of training.*|val never reached.*)",
        "speed": r"^(as trained.*)$",
        "lesson": r"^(after \d+ steps .*)$",
    }
    found = re.findall(patterns[name], log, flags=re.M)
    if not found:
        return "(no figure; see the log)"
    return re.sub(r"\s+", " ", found[-1]).strip()[:110]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="the output folder (default runs/gpu-check-<date>)")
    parser.add_argument("--dry-run", action="store_true", help="every step at toy size on the CPU")
    args = parser.parse_args()
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("gpu_check: this PyTorch sees no CUDA GPU; use --dry-run to rehearse on the CPU", file=sys.stderr)
            return 2
    out = args.out or ROOT / "runs" / f"gpu-check-{datetime.now():%Y%m%d-%H%M%S}"
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if args.dry_run:
        env.update(MINILLM_QUICK="1", MINILLM_TEST_DEVICE="cpu", CUDA_VISIBLE_DEVICES="")
    rows = []
    for name, command, timeout in steps(args.dry_run, out):
        t0 = time.perf_counter()
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            log, status = done.stdout + done.stderr, "ok" if done.returncode == 0 else f"exit {done.returncode}"
        except subprocess.TimeoutExpired as e:
            log = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
            status = f"timeout {timeout} s"
        seconds = time.perf_counter() - t0
        (out / f"{name}.log").write_text(" ".join(command) + "\n\n" + log, encoding="utf-8")
        rows.append((name, status, seconds, figure(name, log)))
        print(f"{name:<7} {status:<12} {seconds:6.0f} s  {rows[-1][3]}", flush=True)
    print(f"\ngpu-check{' (dry run, CPU, toy sizes)' if args.dry_run else ''}: {out}")
    print(f"{'step':<7} {'status':<12} {'time':>8}  figure")
    for name, status, seconds, text in rows:
        print(f"{name:<7} {status:<12} {seconds:6.0f} s  {text}")
    print(f"{'all':<7} {'ok' if all(r[1] == 'ok' for r in rows) else 'FAILED':<12} {sum(r[2] for r in rows):6.0f} s")
    return 0 if all(r[1] == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
