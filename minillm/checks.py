"""Self-checks for the course's exercises (package plumbing, not a lesson).

Every exercise ends with a check cell that runs real cases against the learner's code
and prints a verdict, for example:

    check("Exercise 1 · vocabulary", [
        ("the letters of 'banana'", lambda: vocabulary("banana"), ["a", "b", "n"]),
        ("an empty text",           lambda: vocabulary(""),       []),
    ])

A case is (what it tries, a function that calls the learner's code, what it should give).
What it should give may be a plain value (compared with ==), a tensor or a float
(compared with a tolerance), `Close(value, atol=...)` for another tolerance,
`Raises(ValueError, "text in the message")` for an error, or `Holds(predicate, "what
must hold")` for a property. A stub that still raises NotImplementedError gets
"not done yet", never an exception, so an unsolved notebook still runs to the end.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

__all__ = ["check", "Close", "Raises", "Holds", "Result", "results", "stale_exports", "check_package"]

NOT_DONE, PASSED, FAILED = "not done", "passed", "failed"


@dataclass(frozen=True)
class Close:
    """Expect a number or tensor within atol + rtol * |expected|. The defaults suit a float32 result
    of order one that sums a few dozen terms of order one, which another summation order (another
    CPU, or a learner's equally right code) moves by ~1e-6 at most; a result that sums many or large
    terms is known only to ~1e-7 of sum|terms|, and needs a tolerance in proportion."""
    value: Any
    atol: float = 1e-5
    rtol: float = 1e-5


@dataclass(frozen=True)
class Raises:
    """Expect the call to raise `error` with `match` somewhere in its message."""
    error: type[BaseException]
    match: str = ""


@dataclass(frozen=True)
class Holds:
    """Expect predicate(got) to be true; `what` says what it tests."""
    predicate: Callable[[Any], bool]
    what: str


@dataclass
class Result:
    title: str
    status: str                 # "passed", "failed" or "not done"
    passed: int                 # cases that passed
    total: int                  # cases run
    report: str = field(repr=False)


# Every verdict given in this Python session, newest last: the test suite reads it to
# prove that each check accepts its solution and rejects a stub or a wrong answer.
results: list[Result] = []


def _show(value: Any, width: int = 200) -> str:
    """A short account of a value for a verdict: never a whole tensor, never a function's repr."""
    if isinstance(value, Raises):
        return value.error.__name__ + (f" mentioning {value.match!r}" if value.match else "")
    if isinstance(value, Holds):
        return value.what
    if isinstance(value, Close):
        value = value.value
    if isinstance(value, torch.Tensor):
        flat = value.detach().flatten()
        shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else repr(v) for v in flat[:6].tolist())
        more = ", ..." if flat.numel() > 6 else ""
        return f"a tensor of shape {tuple(value.shape)}, {value.dtype}: [{shown}{more}]"
    if callable(value) and not isinstance(value, type):
        return f"a function ({getattr(value, '__name__', type(value).__name__)})"
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _same(expected: Any, got: Any) -> tuple[bool, str]:
    """(does got match expected, why not)."""
    if isinstance(expected, Holds):
        try:
            return bool(expected.predicate(got)), f"expected {expected.what}"
        except Exception as e:  # a predicate that cannot even be evaluated is a failure
            return False, f"expected {expected.what}; checking it raised {type(e).__name__}: {e}"
    atol, rtol = 1e-5, 1e-5
    if isinstance(expected, Close):
        expected, atol, rtol = expected.value, expected.atol, expected.rtol
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return False, f"expected a tensor, got a {type(got).__name__}"
        if tuple(got.shape) != tuple(expected.shape):
            return False, f"expected shape {tuple(expected.shape)}, got shape {tuple(got.shape)}"
        g, e = got.detach().double().cpu(), expected.detach().double().cpu()
        if expected.is_floating_point() or got.is_floating_point():
            ok = torch.allclose(g, e, atol=atol, rtol=rtol, equal_nan=True)
        else:
            ok = bool(torch.equal(g, e))
        if ok:
            return True, ""
        diff = (g - e).abs().nan_to_num(nan=float("inf"))
        where = tuple(int(i) for i in torch.unravel_index(diff.argmax(), diff.shape)) if diff.dim() else ()
        return False, (f"largest difference at index {list(where)}: expected {e[where].item():.6g}, "
                       f"got {g[where].item():.6g}")
    if isinstance(expected, float):
        if isinstance(got, torch.Tensor):
            return False, "expected a Python float, got a tensor (turn a one-element tensor into a float with .item())"
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            return False, f"expected a number, got a {type(got).__name__}"
        return math.isclose(got, expected, rel_tol=rtol, abs_tol=atol), "the numbers differ"
    if isinstance(expected, (list, tuple)) and isinstance(got, (list, tuple)) and list(expected) != list(got):
        for i, (e, g) in enumerate(zip(expected, got)):
            if e != g:
                return False, f"first difference at index {i}: expected {e!r}, got {g!r}"
        return False, f"expected {len(expected)} items, got {len(got)}"
    try:
        return bool(expected == got), "not equal"
    except Exception as e:
        return False, f"cannot compare: {type(e).__name__}: {e}"


def _stub_name(error: BaseException) -> str:
    """The function whose body raised NotImplementedError (the innermost frame)."""
    tb = error.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb.tb_frame.f_code.co_name if tb is not None else "?"


def check(title: str, cases: list[tuple[str, Callable[[], Any], Any]], *, quiet: bool = False) -> None:
    """Run the cases, print a verdict and record it in `results` (it returns nothing, so
    a check cell shows the verdict once)."""
    lines, passed = [], 0
    for what, call, expected in cases:
        try:
            got = call()
        except NotImplementedError as e:
            report = (f"{title}: not done yet: `{_stub_name(e)}` still raises NotImplementedError. "
                      f"Replace that line with your code, then run this cell again.")
            return _finish(Result(title, NOT_DONE, passed, len(cases), report), quiet)
        except Exception as e:
            if isinstance(expected, Raises) and isinstance(e, expected.error) and expected.match in str(e):
                passed += 1
                lines.append(f"  ✓ {what}")
            else:
                want = _show(expected)
                lines.append(f"  ✗ {what}\n      expected: {want}\n      got:      "
                             f"{type(e).__name__}: {e}")
            continue
        if isinstance(expected, Raises):
            lines.append(f"  ✗ {what}\n      expected: {_show(expected)}\n      got:      no error, the result {_show(got)}")
            continue
        ok, why = _same(expected, got)
        if ok:
            passed += 1
            lines.append(f"  ✓ {what}")
        elif isinstance(expected, Holds):
            lines.append(f"  ✗ {what}\n      {why}\n      got: {_show(got)}")
        else:
            lines.append(f"  ✗ {what} ({why})\n      expected: {_show(expected)}\n      got:      {_show(got)}")
    status = PASSED if passed == len(cases) else FAILED
    mark = "all pass ✓" if status == PASSED else "not yet ✗"
    report = f"{title}: {passed} of {len(cases)} cases pass, {mark}\n" + "\n".join(lines)
    return _finish(Result(title, status, passed, len(cases), report), quiet)


def _finish(result: Result, quiet: bool) -> None:
    results.append(result)
    if not quiet:
        print(result.report)


# ----------------------------------------------------------------------------- a stale package

def _normalise(code: str) -> str:
    return "\n".join(line.rstrip() for line in code.strip().splitlines())


def stale_exports(module, cells=None) -> list[str]:
    """The names defined by `#| export` cells run in this kernel that the module's file does
    not hold as they were run: cells edited since the last `make export`. cells: the sources
    of the cells run, oldest first (default: this IPython kernel's input history, `In`); for
    each name the latest definition counts."""
    import ast
    from pathlib import Path

    if cells is None:
        try:
            cells = get_ipython().user_ns.get("In", [])   # noqa: F821 (defined in IPython)
        except NameError:                                  # not in IPython: nothing was run here
            return []
    latest = {}
    for source in cells:
        if not source.lstrip().startswith("#| export"):
            continue
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names = [node.name]
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                names = [t.id for t in targets if isinstance(t, ast.Name)]
            else:
                continue                                   # imports and the module docstring
            for name in names:
                latest[name] = ast.get_source_segment(source, node)
    held = _normalise(Path(module.__file__).read_text(encoding="utf-8"))
    return [name for name, code in latest.items() if _normalise(code) not in held]


def check_package(name: str, cells=None) -> bool:
    """Say whether minillm.<name> holds this notebook's `#| export` cells as they were run:
    the cells after it import the package, so an edited cell takes effect only after
    `make export` and a kernel restart. Returns True when it is current."""
    import importlib

    module = importlib.import_module(f"minillm.{name}")
    stale = stale_exports(module, cells)
    if stale:
        print(f"minillm.{name} is older than the cells you ran: {', '.join(stale)} changed. The cells below "
              f"import the package and still use the old code: run `make export` in a terminal, then restart "
              f"the kernel.")
        return False
    print(f"minillm.{name} holds the exported cells as they ran here.")
    return True
