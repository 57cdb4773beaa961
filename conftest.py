"""Shared set-up for the test suite (at the root, so that `pytest notebooks/NN_name.ipynb` alone
gets it too).

- MINILLM_QUICK=1: expensive notebook cells run a small version of themselves.
- MINILLM_OFFLINE=1: nothing downloads; the corpus comes from MINILLM_DATA (CI points it
  at ../shared/data) or from the cache that `make data` filled.
- OMP_NUM_THREADS=1 (unless set): the suite's tensors are tiny, and on a small shared machine
  torch's thread pool made them 10-20x slower, not faster.
All are set before any notebook kernel starts, and kernels inherit them.
"""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
os.environ["MINILLM_QUICK"] = "1"
os.environ["MINILLM_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(ROOT / "tools"))
sys.path.insert(0, str(ROOT / "tests"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: the GPU path (tests/test_gpu.py); skipped without CUDA unless "
                                       "MINILLM_TEST_DEVICE=cpu rehearses it on the CPU; `make gpu-check` runs it")
    config.addinivalue_line("markers", "browser: a lesson in JupyterLab in Chromium (tests/browser); left out unless "
                                       "asked for with -m browser; `make test-browser` runs them")


def pytest_collection_modifyitems(config, items):
    """Browser tests run only when the -m expression names them (they need Chromium and take minutes)."""
    if "browser" in (config.getoption("markexpr") or ""):
        return
    left_out = [item for item in items if item.get_closest_marker("browser")]
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = [item for item in items if not item.get_closest_marker("browser")]
