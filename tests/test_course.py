"""The course's own invariants: the package is generated from the lessons, the exercises
from the solutions, the import graph follows the course order, every notebook is clean.
Each checker is also run on a deliberately broken case, to prove it can fail."""
import ast
import json
import shutil

import pytest

import course
import minillm


def test_package_is_generated_from_the_notebooks():
    assert course.export(check=True) == []


def test_exercises_are_generated_from_the_solutions():
    assert course.exercises(check=True) == []


def test_notebooks_are_clean():
    assert course.lint() == []


def test_imports_follow_the_course_order():
    assert course.import_problems() == []


def test_every_exported_module_class_is_in_the_gpt_or_named_in_the_lessons_class_line():
    assert course.class_line_problems() == []


def test_class_line_check_can_fail(scratch_course):
    path = scratch_course / "notebooks" / "14_residual.ipynb"
    nb = json.loads(path.read_text())
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown" and course.IN_THE_GPT in course.source(cell):
            cell["source"] = course.source(cell).replace("`PreNormResidual`", "the residual class")
    path.write_text(course.nb_text(nb))
    assert any("the GPT does not use `PreNormResidual`" in p for p in course.class_line_problems())


def test_every_lesson_has_its_five_files():
    for nb in course.lessons("notebooks"):
        stem = nb.stem
        assert (course.ROOT / "solutions" / nb.name).exists(), stem
        assert (course.ROOT / "exercises" / nb.name).exists(), stem
        assert (course.ROOT / "tests" / f"test_{stem}.py").exists(), stem
        module = course.build_module(nb)
        assert module is not None and (course.ROOT / "minillm" / f"{module.name}.py").exists(), stem


def test_init_reexports_every_lesson():
    tree = ast.parse((course.ROOT / "minillm" / "__init__.py").read_text())
    imported = {node.module.split(".")[1] for node in tree.body
                if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("minillm.")}
    assert imported == set(course.module_lessons()), "minillm/__init__.py must re-export each lesson's module"
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module.startswith("minillm."):
            for alias in node.names:
                assert getattr(minillm, alias.name) is not None


# ------------------------------------------------------------------ the checkers can fail

@pytest.fixture
def scratch_course(tmp_path, monkeypatch):
    """A copy of the course's notebooks, solutions, exercises and package in tmp_path."""
    for folder in ("notebooks", "solutions", "exercises", "minillm"):
        shutil.copytree(course.ROOT / folder, tmp_path / folder,
                        ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
    monkeypatch.setattr(course, "ROOT", tmp_path)
    return tmp_path


def test_export_check_catches_a_hand_edited_module(scratch_course):
    target = scratch_course / "minillm" / "corpus.py"
    target.write_text(target.read_text() + "\nHAND_EDIT = 1\n")
    problems = course.export(check=True)
    assert any("corpus.py differs from 01_big_picture.ipynb" in p for p in problems)
    course.export()
    assert course.export(check=True) == []


def test_export_check_catches_an_orphaned_module(scratch_course):
    (scratch_course / "minillm" / "orphan.py").write_text(f'"""{course.GENERATED_MARK}99_gone.ipynb"""\n')
    assert any("orphan.py" in p for p in course.export(check=True))


def test_exercise_check_catches_a_stale_exercise(scratch_course):
    path = scratch_course / "solutions" / "01_big_picture.ipynb"
    nb = json.loads(path.read_text())
    nb["cells"][0]["source"] = ["# A changed title\n"]
    path.write_text(course.nb_text(nb))
    assert any("out of date" in p for p in course.exercises(check=True))


def test_solution_regions_must_be_well_formed():
    cell = {"cell_type": "code", "source": "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"}
    with pytest.raises(ValueError, match="inside a function body"):
        course.regions({"cells": [cell]})
    cell = {"cell_type": "code", "source": "def f():\n    ### BEGIN SOLUTION\n    return 1"}
    with pytest.raises(ValueError, match="without"):
        course.regions({"cells": [cell]})


def test_exercise_folds_the_hint_away_and_the_stub_raises():
    nb = {"metadata": {}, "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Title"},
        {"cell_type": "code", "metadata": {}, "outputs": [], "execution_count": 1, "source":
         "def f(x):\n    ### BEGIN SOLUTION\n    ### HINT: double it\n    return 2 * x\n    ### END SOLUTION\n"},
        {"cell_type": "markdown", "metadata": {"tags": ["solution"]}, "source": "The answer is 2x."}]}
    out = course.exercise_notebook(nb, "99_x.ipynb")
    texts = [course.source(c) for c in out["cells"]]
    assert texts[0] == "# Title" and "Exercises." in texts[1]
    assert texts[2].startswith("<details><summary>Hint</summary>") and "double it" in texts[2]
    code = texts[3]
    assert "return 2 * x" not in code and "double it" not in code and "The answer" not in "".join(texts)
    namespace = {}
    exec(code, namespace)
    with pytest.raises(NotImplementedError):
        namespace["f"](1)


@pytest.mark.parametrize("breakage, message", [
    (lambda nb: nb["cells"][0].update(cell_type="code", outputs=[{"output_type": "error", "ename": "E", "evalue": "x", "traceback": []}], execution_count=1), "error output"),
    (lambda nb: nb["metadata"]["kernelspec"].update(name="myenv"), "not the standard 'python3'"),
    (lambda nb: next(c for c in nb["cells"] if c.get("outputs")).update(execution_count=None), "outputs without an execution count"),
    (lambda nb: next(c for c in nb["cells"] if c["cell_type"] == "code").update(execution_count=99), "execution count 99"),
    (lambda nb: nb["cells"][0].update(source=["see /home/someone/data.txt"]), "absolute path"),
    (lambda nb: [c for c in nb["cells"] if c["cell_type"] == "code"][3].update(
        source=["torch.set_num_threads(1)\n", "x = 1"]), "set_num_threads at the top level"),
])
def test_lint_catches_a_broken_notebook(scratch_course, breakage, message):
    path = scratch_course / "notebooks" / "01_big_picture.ipynb"
    nb = json.loads(path.read_text())
    breakage(nb)
    path.write_text(course.nb_text(nb))
    assert any(message in p for p in course.lint()), course.lint()


def test_lint_wants_exercises_without_outputs(scratch_course):
    path = scratch_course / "exercises" / "01_big_picture.ipynb"
    nb = json.loads(path.read_text())
    code = next(c for c in nb["cells"] if c["cell_type"] == "code")
    code.update(execution_count=1, outputs=[{"output_type": "stream", "name": "stdout", "text": ["hi\n"]}])
    path.write_text(course.nb_text(nb))
    assert any("without outputs" in p for p in course.lint())


def test_import_order_catches_a_forward_import(tmp_path):
    (tmp_path / "early.py").write_text("import torch\nfrom minillm.late import thing\n")
    (tmp_path / "late.py").write_text("from minillm import early\nimport os\n")
    (tmp_path / "heavy.py").write_text("import matplotlib.pyplot as plt\ndef f():\n    import matplotlib\n")
    problems = course.import_problems(tmp_path, {"early": 1, "late": 2, "heavy": 3})
    assert any("early.py (lesson 01) imports 'minillm.late'" in p for p in problems)
    assert any("heavy.py imports 'matplotlib' at the top" in p for p in problems)
    assert not any("late.py" in p for p in problems)
    assert len(problems) == 2
