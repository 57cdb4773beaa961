"""The exercise-check plumbing (minillm.checks): verdicts a learner can act on."""
import torch

from minillm import checks
from minillm.checks import Close, Holds, Raises, check


def verdict(cases, capsys):
    check("T", cases)
    return checks.results[-1], capsys.readouterr().out


def test_all_pass(capsys):
    result, out = verdict([("one", lambda: 1 + 1, 2), ("close", lambda: 0.1 + 0.2, 0.3),
                           ("tensor", lambda: torch.ones(2) * 1.000001, torch.ones(2)),
                           ("raises", lambda: int("x"), Raises(ValueError, "invalid literal")),
                           ("holds", lambda: 5, Holds(lambda x: x > 3, "more than 3"))], capsys)
    assert result.status == checks.PASSED and result.passed == 5 and "5 of 5 cases pass" in out


def test_a_stub_is_not_done_and_names_the_function(capsys):
    def helper():
        raise NotImplementedError
    def exercise():
        return helper()
    result, out = verdict([("a", exercise, 1)], capsys)
    assert result.status == checks.NOT_DONE and "`helper` still raises NotImplementedError" in out


def test_failures_say_what_was_expected(capsys):
    result, out = verdict([
        ("float from a tensor", lambda: torch.tensor(0.5), 0.5),
        ("lists", lambda: [1, 2, 3], [1, 2, 4]),
        ("shape", lambda: torch.zeros(2, 3), torch.zeros(3, 2)),
        ("tolerance", lambda: 1.01, Close(1.0, atol=1e-3)),
        ("no error", lambda: 1, Raises(ValueError, "bad")),
        ("wrong error", lambda: [][1], Raises(ValueError, "bad")),
        ("crash", lambda: 1 / 0, 1),
        ("predicate", lambda: 2, Holds(lambda x: x > 3, "more than 3")),
        ("where", lambda: torch.tensor([[1.0, 2.0], [3.0, 9.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]])),
        ("any error", lambda: 1, Raises(KeyError)),
    ], capsys)
    assert result.status == checks.FAILED and result.passed == 0
    for expected in ("got a tensor", ".item()", "first difference at index 2: expected 4, got 3",
                     "expected shape (3, 2), got shape (2, 3)", "no error, the result 1", "IndexError",
                     "ZeroDivisionError", "expected more than 3",
                     "largest difference at index [1, 1]: expected 4, got 9", "expected: KeyError\n"):
        assert expected in out, expected


def test_verdicts_never_dump_a_tensor_or_a_function(capsys):
    big = torch.arange(1000.0)
    result, out = verdict([
        ("holds that raises", lambda: 1 / 0, Holds(lambda x: x > 3, "more than 3")),
        ("big tensor", lambda: big + 1, big),
    ], capsys)
    assert result.status == checks.FAILED
    assert "<lambda>" not in out and "<function" not in out and "expected: more than 3" in out
    assert "a tensor of shape (1000,), torch.float32: [1, 2, 3, 4, 5, 6, ...]" in out
    assert "999." not in out                                   # the tail of the tensor is not printed


def test_stale_exports_finds_cells_edited_since_the_export(capsys):
    import json
    import minillm.corpus as corpus
    from course import ROOT
    nb = json.loads((ROOT / "notebooks" / "01_big_picture.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    assert checks.stale_exports(corpus, cells) == []
    assert checks.check_package("corpus", cells) and "holds the exported cells" in capsys.readouterr().out
    edited = cells + [next(c for c in cells if "def sha256_of" in c).replace("1 << 20", "1 << 16")]
    assert checks.stale_exports(corpus, edited) == ["sha256_of"]
    assert not checks.check_package("corpus", edited)
    out = capsys.readouterr().out
    assert "sha256_of changed" in out and "make export" in out
    assert checks.stale_exports(corpus, edited + cells) == []          # run again as exported: current
    assert checks.stale_exports(corpus) == []                          # outside IPython: nothing was run
