"""Float comparisons whose tolerance says where it comes from.

A float32 sum is only as exact as eps32 * sum|terms| (eps32 = 1.2e-7), and which few units of
that it lands on depends on the order of the additions, which the CPU chooses: MKL on an Intel
Xeon sums in another order than the kernels on an AMD EPYC, AVX2 than AVX-512, two threads
than one. A fixed `atol=1e-5` ignores the size of the terms: a gradient that adds 27 terms of
size 25 to reach 0.08 is only known to about 1e-4, so such a test passes on one CPU and fails
on the next. The tests use two ways out:

- `assert_close64`, where the question is "does our code compute the reference's function":
  run both sides in float64 (`.double()` modules and inputs). Rounding is then ~1e-16 of the
  scale and the check asks for 1e-10 of it: a margin of a million that no summation order uses
  up, while a real mistake is off by far more.
- `assert_close`, where float32 itself is the point (our float32 product against torch's, a
  fused kernel against the unfused one): the tolerance is k * eps * sum|terms|, elementwise,
  with sum|terms| from the same product on absolute values, `summands(a, b)` = |a| @ |b|.
"""
import torch

__all__ = ["assert_close", "assert_close64", "summands"]


def summands(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum_k |a_ik| |b_kj| for every entry of a @ b: the scale of its rounding error (in float64)."""
    return a.detach().double().abs() @ b.detach().double().abs()


def _label(what: str) -> str:
    return f"{what}: " if what else ""


def _report(actual, expected, allowed, what):
    a, e = actual.detach().double(), expected.detach().double()
    excess = ((a - e).abs() - allowed).nan_to_num(nan=float("inf"))
    i = tuple(int(j) for j in torch.unravel_index(excess.argmax(), excess.shape)) if excess.dim() else ()
    allowed = allowed.expand_as(excess)
    return (f"{_label(what)}largest excess at index {list(i)}: expected {e[i].item():.12g}, "
            f"got {a[i].item():.12g}, |difference| {(a[i] - e[i]).abs().item():.3g} > allowed {allowed[i].item():.3g}")


def _check(actual, expected, allowed, what):
    assert isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor), (type(actual), type(expected))
    assert actual.shape == expected.shape, f"{_label(what)}shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a, e = actual.detach().double(), expected.detach().double()
    ok = ((a - e).abs() <= allowed) | (a == e)          # a == e: equal infinities
    assert bool(ok.all()), _report(actual, expected, allowed, what)


def assert_close64(actual: torch.Tensor, expected: torch.Tensor, *, rel: float = 1e-10, scale=None,
                   what: str = "") -> None:
    """Both float64: |actual - expected| <= rel * scale everywhere. scale defaults to max|expected|,
    but at least 1, the size of the inputs of these tests: a result that should be 0 (the gradient
    of a key bias, which softmax ignores) is a sum of terms that cancel, and is 1e-15, not 0."""
    assert actual.dtype == expected.dtype == torch.float64, \
        f"{_label(what)}compare in float64, got {actual.dtype} and {expected.dtype}"
    if scale is None:
        scale = max(expected.detach().abs().max().item() if expected.numel() else 0.0, 1.0)
    _check(actual, expected, torch.as_tensor(rel * scale, dtype=torch.float64), what)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, scale, *, k: float = 16.0, what: str = "") -> None:
    """|actual - expected| <= k * eps * scale elementwise, where eps is the machine epsilon of the
    dtype both are computed in and scale (a tensor that broadcasts, or a number) is sum|terms| of
    what was summed to get `expected`, e.g. summands(a, b) for a @ b. k = 16 covers two summation
    orders of a few dozen terms (they differ by a few eps * sum|terms|), and the rounding of the
    inputs, which enters at the same scale."""
    assert actual.dtype == expected.dtype and actual.is_floating_point(), (actual.dtype, expected.dtype)
    eps = torch.finfo(expected.dtype).eps
    _check(actual, expected, k * eps * torch.as_tensor(scale, dtype=torch.float64), what)
