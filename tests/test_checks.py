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
