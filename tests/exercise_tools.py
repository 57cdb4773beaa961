"""Prove that every exercise check accepts its solution and rejects a stub and a wrong answer.

The solution notebook runs in this process, cell by cell, and the verdicts are read from
`minillm.checks.results`. Each lesson's test lists, for every solution region, one wrong
answer that a learner could plausibly write; the check after it must say "failed".
"""
import contextlib
import io
import os
import re
import warnings
from pathlib import Path

import course
from minillm import checks

MAGIC = re.compile(r"^\s*[%!]")


def run_cells(nb: dict, folder: Path) -> list[checks.Result]:
    """Execute the code cells of `nb` in a fresh namespace in `folder`; return the verdicts."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    start = len(checks.results)
    namespace = {"__name__": "__main__"}
    old = os.getcwd()
    os.chdir(folder)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            for i, cell in enumerate(nb["cells"]):
                if cell["cell_type"] != "code":
                    continue
                code = "\n".join(l for l in course.source(cell).split("\n") if not MAGIC.match(l))
                exec(compile(code, f"<{folder.name} cell {i}>", "exec"), namespace)
    finally:
        os.chdir(old)
        plt.close("all")
    return checks.results[start:]


def statuses(results: list[checks.Result]) -> list[tuple[str, str]]:
    return [(r.title, r.status) for r in results]


def assert_checks_work(lesson: str, wrong: dict[int, str]) -> None:
    """lesson: 'NN_name'. wrong: solution region index -> a wrong body (one or more lines,
    written without indentation)."""
    sol_path = course.ROOT / "solutions" / f"{lesson}.ipynb"
    solution = course.read_nb(sol_path)
    regions = course.regions(solution, sol_path.name)

    solved = run_cells(solution, sol_path.parent)
    assert len(solved) >= 3, f"{lesson}: expected three or more exercise checks, found {len(solved)}"
    assert all(r.status == checks.PASSED for r in solved), f"the solutions fail their checks: {statuses(solved)}"

    exercise_path = course.ROOT / "exercises" / f"{lesson}.ipynb"
    stubs = run_cells(course.read_nb(exercise_path), exercise_path.parent)
    assert statuses(stubs) == [(r.title, checks.NOT_DONE) for r in solved], \
        f"every check of the unsolved exercises must say 'not done': {statuses(stubs)}"

    assert sorted(wrong) == list(range(len(regions))), \
        f"{lesson}: give one wrong answer for each of the {len(regions)} solution regions"
    for index, body in wrong.items():
        def replace(i, region, index=index, body=body):
            if i != index:
                return course.source(solution["cells"][region.cell]).split("\n")[region.start: region.end + 1]
            return [region.indent + line for line in body.strip("\n").split("\n")]
        mutated = run_cells(course.replace_regions(solution, replace), sol_path.parent)
        assert any(r.status == checks.FAILED for r in mutated) and len(mutated) == len(solved), \
            f"a wrong answer in region {index} must fail its check: {statuses(mutated)}"
