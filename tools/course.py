"""The course's own tooling: build the package from the lessons, the exercises from
the solutions, and keep every notebook clean.

    python tools/course.py export [--check]      notebooks/*.ipynb  -> minillm/<name>.py
    python tools/course.py exercises [--check]   solutions/*.ipynb  -> exercises/*.ipynb
    python tools/course.py lint                  every notebook: clean, ordered, portable
    python tools/course.py execute NB [NB ...]   run notebooks top to bottom, in place
    python tools/course.py tidy [--check] [NB ...]  metadata and widget fallbacks, in place, not run
    python tools/course.py unpack NB > FILE      a notebook as plain text, for editing
    python tools/course.py pack FILE NB          that text back into a notebook (no outputs)

`make export`, `make exercises`, `make lint` and `make execute` call these; the test
suite calls the same functions in check mode.

Directives (nbdev-compatible): a code cell whose first lines are `#| default_exp name`
names the lesson's module; a code cell starting with `#| export` goes into it.
Solution regions sit between `### BEGIN SOLUTION` and `### END SOLUTION` inside a
function body; `### HINT: ...` lines in a region become the exercise's hint; a cell
tagged `solution` is left out of the exercises.
"""
from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import platform
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LESSON_DIRS = ("notebooks", "solutions", "exercises")
LESSON_NAME = re.compile(r"^(\d\d)_[a-z0-9_]+\.ipynb$")
DIRECTIVE = re.compile(r"^#\|\s*([\w-]+)\s*(.*?)\s*$")
BEGIN, END, HINT = "### BEGIN SOLUTION", "### END SOLUTION", "### HINT:"
GENERATED_MARK = "Generated from notebooks/"


# ----------------------------------------------------------------------------- notebooks I/O

def read_nb(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def nb_text(nb: dict) -> str:
    """Serialise the way Jupyter does (indent 1, sorted keys), so saves from JupyterLab
    and from these tools give the same bytes."""
    return json.dumps(nb, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def atomic_write(path: Path, text: str) -> None:
    """Write through a temporary file in the same folder, then rename: a reader sees
    the old file or the new one, never half of one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)   # mkstemp makes the file private; give it normal permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def split_source(text: str) -> list[str]:
    lines = text.split("\n")
    return [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])


def lessons(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).glob("*.ipynb") if LESSON_NAME.match(p.name))


def directives(cell: dict) -> tuple[dict[str, str], str]:
    """The `#| name value` lines at the top of a code cell, and the code after them."""
    found: dict[str, str] = {}
    lines = source(cell).split("\n")
    i = 0
    while i < len(lines):
        m = DIRECTIVE.match(lines[i])
        if m:
            found[m.group(1)] = m.group(2)
        elif lines[i].strip():
            break
        i += 1
    return found, "\n".join(lines[i:]).strip("\n")


# ----------------------------------------------------------------------------- export

@dataclass
class Module:
    name: str            # "corpus"
    notebook: Path       # notebooks/01_big_picture.ipynb
    text: str            # the generated file


def public_names(code: str) -> list[str]:
    """Top-level functions, classes and assigned names that do not start with `_`."""
    names: list[str] = []
    for node in ast.parse(code).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return [n for n in dict.fromkeys(names) if not n.startswith("_")]


def format_all(names: list[str], width: int = 88) -> str:
    lines, line = [], "   "
    for item in (f"{n!r}," for n in names):
        if len(line) + 1 + len(item) > width:
            lines.append(line)
            line = "   "
        line += " " + item
    lines.append(line)
    return "__all__ = [\n" + "\n".join(lines) + "\n]"


def build_module(nb_path: Path) -> Module | None:
    nb = read_nb(nb_path)
    name, chunks = None, []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        found, code = directives(cell)
        if "default_exp" in found:
            name = found["default_exp"]
        if "export" in found or "exports" in found:
            if name is None:
                raise SystemExit(f"{nb_path.name}: an `#| export` cell comes before `#| default_exp`")
            chunks.append(code.rstrip())
    if name is None:
        return None
    code = "\n\n\n".join(chunks)
    tree = ast.parse(code)
    doc = ast.get_docstring(tree, clean=False) if tree.body else None
    if doc is not None:  # drop the docstring from the code: it heads the module
        first = tree.body[0]
        lines = code.split("\n")
        code = "\n".join(lines[first.end_lineno:]).lstrip("\n")
    rel = nb_path.relative_to(ROOT).as_posix()
    header = (doc.strip() + "\n\n") if doc else ""
    header += f"{GENERATED_MARK}{nb_path.name} by `make export`: do not edit this file.\n"
    header += "Change the notebook and run `make export` again."
    assert rel == f"notebooks/{nb_path.name}"
    names = public_names(code)
    text = f'"""{header}\n"""\n\n{format_all(names)}\n\n{code}\n'
    return Module(name, nb_path, text)


def export(check: bool = False) -> list[str]:
    """Write minillm/<name>.py for every lesson that exports; with check, write nothing
    and return the problems (a module that differs from its notebook, or a generated
    module whose notebook no longer exports it)."""
    problems: list[str] = []
    made: set[str] = set()
    for nb_path in lessons("notebooks"):
        mod = build_module(nb_path)
        if mod is None:
            continue
        target = ROOT / "minillm" / f"{mod.name}.py"
        made.add(target.name)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == mod.text:
            continue
        if check:
            if current is None:
                problems.append(f"minillm/{target.name} is missing: run `make export`")
            else:
                diff = difflib.unified_diff(mod.text.splitlines(), current.splitlines(),
                                            f"from {nb_path.name}", f"minillm/{target.name}", lineterm="", n=1)
                problems.append(f"minillm/{target.name} differs from {nb_path.name}"
                                f" (edit the notebook, then `make export`):\n" + "\n".join(list(diff)[:30]))
        else:
            atomic_write(target, mod.text)
    for path in sorted((ROOT / "minillm").glob("*.py")):
        if path.name not in made and GENERATED_MARK in path.read_text(encoding="utf-8")[:2000]:
            problems.append(f"minillm/{path.name} says it is generated, but no notebook exports it")
    return problems


def module_lessons() -> dict[str, int]:
    """Module name -> the number of the lesson that writes it."""
    out = {}
    for nb_path in lessons("notebooks"):
        mod = build_module(nb_path)
        if mod is not None:
            out[mod.name] = int(nb_path.name[:2])
    return out


# Third-party packages a lesson module may import at its top: the course's own stack.
# Optional heavy ones may be imported only inside a function, so `import minillm` never
# needs them.
TOP_LEVEL_ALLOWED = {"torch", "einops", "numpy", "regex", "tqdm"}
LAZY_ALLOWED = TOP_LEVEL_ALLOWED | {"matplotlib", "safetensors", "transformers", "IPython"}   # IPython: only in a notebook
PLUMBING = {"__init__", "__main__", "checks"}


def import_problems(package: Path | None = None, order: dict[str, int] | None = None) -> list[str]:
    """The import graph must be the course order: a lesson module imports only modules
    of earlier lessons, the standard library and the allowed third-party packages."""
    package = package or ROOT / "minillm"
    order = order if order is not None else module_lessons()
    problems = []
    for path in sorted(package.glob("*.py")):
        name = path.stem
        if name in PLUMBING:
            continue
        if name not in order:
            problems.append(f"minillm/{path.name} is neither a lesson's module nor plumbing ({sorted(PLUMBING)})")
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top = set(map(id, tree.body))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ("minillm." if node.level else "") + (node.module or "")
                if base.strip(".") == "minillm":  # from minillm import corpus
                    targets = [f"minillm.{a.name}" for a in node.names]
                else:
                    targets = [base]
            else:
                continue
            for target in targets:
                parts = target.split(".")
                root = parts[0]
                if root == "minillm":
                    sub = parts[1] if len(parts) > 1 else ""
                    if sub not in order or order[sub] >= order[name]:
                        problems.append(f"minillm/{path.name} (lesson {order[name]:02d}) imports {target!r}, "
                                        f"which is not a module of an earlier lesson")
                elif root in sys.stdlib_module_names or root == "__future__":
                    continue
                elif root in TOP_LEVEL_ALLOWED or (root in LAZY_ALLOWED and id(node) not in top):
                    continue
                else:
                    where = "at the top of the module" if id(node) in top else "anywhere"
                    problems.append(f"minillm/{path.name} imports {root!r} {where}: not allowed "
                                    f"(top level: stdlib, {sorted(TOP_LEVEL_ALLOWED)}; inside functions also "
                                    f"{sorted(LAZY_ALLOWED - TOP_LEVEL_ALLOWED)})")
    return problems


# ----------------------------------------------------------------------------- exercises

@dataclass
class Region:
    cell: int       # index of the code cell in the notebook
    start: int      # line of BEGIN SOLUTION
    end: int        # line of END SOLUTION
    indent: str
    hints: list[str]


def regions(nb: dict, where: str = "") -> list[Region]:
    found = []
    for ci, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = source(cell).split("\n")
        start = None
        for li, line in enumerate(lines):
            stripped = line.strip()
            if stripped.startswith(BEGIN):
                if start is not None:
                    raise ValueError(f"{where} cell {ci}: nested {BEGIN}")
                start, indent = li, line[: len(line) - len(line.lstrip())]
                if not indent:
                    raise ValueError(f"{where} cell {ci}: a solution region must sit inside a "
                                     "function body, so that its stub can raise NotImplementedError")
            elif stripped.startswith(END):
                if start is None:
                    raise ValueError(f"{where} cell {ci}: {END} without {BEGIN}")
                hints = [l.strip()[len(HINT):].strip() for l in lines[start:li] if l.strip().startswith(HINT)]
                found.append(Region(ci, start, li, indent, hints))
                start = None
        if start is not None:
            raise ValueError(f"{where} cell {ci}: {BEGIN} without {END}")
    return found


def stub(region: Region) -> list[str]:
    return [f"{region.indent}# YOUR CODE HERE", f"{region.indent}raise NotImplementedError"]


def hint_cell(hints: list[str]) -> dict:
    """A markdown cell with the hints folded away: a learner opens it only when stuck."""
    body = "\n\n".join(hints)
    return {"cell_type": "markdown", "metadata": {},
            "source": split_source(f"<details><summary>Hint</summary>\n\n{body}\n\n</details>")}


def replace_regions(nb: dict, replacement, where: str = "") -> dict:
    """A copy of nb with region i replaced by replacement(i, region) (a list of lines)."""
    nb = json.loads(json.dumps(nb))
    by_cell: dict[int, list[tuple[int, Region]]] = {}
    for i, r in enumerate(regions(nb, where)):
        by_cell.setdefault(r.cell, []).append((i, r))
    for ci, items in by_cell.items():
        lines = source(nb["cells"][ci]).split("\n")
        for i, r in reversed(items):
            lines[r.start: r.end + 1] = replacement(i, r)
        nb["cells"][ci]["source"] = split_source("\n".join(lines))
    return nb


def exercise_notebook(nb: dict, solution_name: str, where: str = "") -> dict:
    """The exercise notebook made from a solution notebook: regions become stubs, their hints
    go into a folded cell above the code, `solution` cells are dropped, outputs cleared."""
    found = regions(nb, where)
    if not found:
        raise ValueError(f"{where} has no {BEGIN} regions")
    hints_by_cell: dict[int, list[str]] = {}
    for r in found:
        hints_by_cell.setdefault(r.cell, []).extend(r.hints)
    stubbed = replace_regions(nb, lambda i, r: stub(r), where)
    cells = []
    for ci, cell in enumerate(stubbed["cells"]):
        if "solution" in cell.get("metadata", {}).get("tags", []):
            continue
        if hints_by_cell.get(ci):
            cells.append(hint_cell(hints_by_cell[ci]))
        cell = dict(cell)
        cell["metadata"] = {k: v for k, v in cell.get("metadata", {}).items() if k in ("tags",)}
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        cell.pop("id", None)
        cells.append(cell)
    banner = {
        "cell_type": "markdown", "metadata": {},
        "source": split_source(
            f"> **Exercises.** Write your code where it says `# YOUR CODE HERE`, then run the check "
            f"cell below it: it tells you which case passes, and what it expected where one fails. "
            f"Stuck? Open the *Hint* above the exercise; the solved notebook is "
            f"[`solutions/{solution_name}`](../solutions/{solution_name}).\n"
            f">\n> *This file is generated from the solutions by `make exercises`, which overwrites it: "
            f"keep your own work in a copy if you run that.*"),
    }
    out = {"cells": [cells[0], banner] + cells[1:], "metadata": clean_metadata(nb["metadata"]),
           "nbformat": 4, "nbformat_minor": 5}
    for i, cell in enumerate(out["cells"]):
        cell["id"] = f"cell-{i:03d}"
    return out


def build_exercise(sol_path: Path) -> str:
    where = sol_path.relative_to(ROOT).as_posix()
    return nb_text(exercise_notebook(read_nb(sol_path), sol_path.name, where))


def exercises(check: bool = False) -> list[str]:
    problems = []
    solved = lessons("solutions")
    for sol in solved:
        target = ROOT / "exercises" / sol.name
        text = build_exercise(sol)
        current = target.read_text(encoding="utf-8") if target.exists() else None
        if current == text:
            continue
        if check:
            problems.append(f"exercises/{sol.name} is out of date with solutions/{sol.name}: run `make exercises`")
        else:
            atomic_write(target, text)
    for ex in lessons("exercises"):
        if not (ROOT / "solutions" / ex.name).exists():
            problems.append(f"exercises/{ex.name} has no solutions/{ex.name} to come from")
    return problems


# ----------------------------------------------------------------------------- lint

ABSOLUTE_PATH = re.compile(r"(?<![\w.])(/home/|/root/|/Users/|/work/|/tmp/|/private/var/|[A-Za-z]:\\\\?Users)")


# What JupyterLab (ipykernel's kernelspec) writes: committing the same means that opening a lesson
# and closing it again does not mark it changed.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}


# What a running ipykernel reports and JupyterLab writes into the notebook when the kernel starts: a
# notebook that carries less is marked changed as soon as it is opened. `version` is the Python that
# last ran the notebook (kept as found: it changes only when a notebook is executed again).
LANGUAGE_INFO = {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
                 "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
                 "pygments_lexer": "ipython3"}


def js_numbers(value):
    """`value` with every whole float as an int (1.0 -> 1), as JavaScript's JSON writes it: JupyterLab saves
    the widget state that way, so a notebook saved unchanged from the browser keeps its bytes."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e21:
        return int(value)
    if isinstance(value, dict):
        return {k: js_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [js_numbers(v) for v in value]
    return value


def clean_metadata(meta: dict) -> dict:
    version = meta.get("language_info", {}).get("version") or platform.python_version()
    return {
        "kernelspec": dict(KERNELSPEC),
        "language_info": {**LANGUAGE_INFO, "version": version},
        **({"widgets": js_numbers(meta["widgets"])} if "widgets" in meta else {}),
    }


# process-wide settings that a lesson must put back: flagged when set at a cell's top level, unless the
# cell puts it back in a `finally:` (an indented call of the same function), or it is the first code
# cell, where a lesson may choose its environment up front, for all its cells
PROCESS_SETTING = re.compile(r"^(torch\.(?:set_num_threads|set_flush_denormal|set_default_dtype|"
                             r"set_num_interop_threads|use_deterministic_algorithms))\(")


def lint_notebook(path: Path, executed: bool) -> list[str]:
    """executed=True: every code cell ran, in order 1, 2, 3... from a fresh kernel.
    executed=False: no outputs and no execution counts at all."""
    rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
    nb = read_nb(path)
    problems = []
    kernelspec = nb.get("metadata", {}).get("kernelspec", {})
    if kernelspec.get("name") != "python3":
        problems.append(f"{rel}: kernel is {kernelspec.get('name')!r}, not the standard 'python3'")
    elif kernelspec != KERNELSPEC:
        problems.append(f"{rel}: kernelspec {kernelspec} is not what JupyterLab writes, {KERNELSPEC} "
                        f"(opening the notebook would mark it changed)")
    language = nb.get("metadata", {}).get("language_info", {})
    if {k: v for k, v in language.items() if k != "version"} != LANGUAGE_INFO or not language.get("version"):
        problems.append(f"{rel}: language_info {language} is not what the kernel reports, {LANGUAGE_INFO} and a "
                        f"version (opening the notebook would mark it changed): run `python tools/course.py tidy`")
    widget_problems = widget_fallback_problems(nb)
    problems += [f"{rel}: {p}" for p in widget_problems]
    if not problems and nb_text(tidied(nb)) != path.read_text(encoding="utf-8"):
        problems.append(f"{rel}: not as `python tools/course.py tidy` writes it (metadata or widget state): run it")
    count = 0
    first_code = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), None)
    for i, cell in enumerate(nb["cells"]):
        where = f"{rel} cell {i}"
        text = source(cell)
        if ABSOLUTE_PATH.search(text):
            problems.append(f"{where}: source holds an absolute path ({ABSOLUTE_PATH.search(text).group(0)}...)")
        if cell["cell_type"] != "code":
            continue
        for line in text.split("\n"):
            m = PROCESS_SETTING.match(line)
            restored = "finally:" in text and re.search(rf"^\s+{re.escape(m.group(1))}\(", text, re.M) if m else False
            if m and i != first_code and not restored:   # the set-up cell may choose the lesson's environment
                problems.append(f"{where}: {m.group(1)} at the top level changes the whole kernel for every later "
                                f"cell; set it inside a try/finally (or a with block) that puts it back")
        outputs, n = cell.get("outputs", []), cell.get("execution_count")
        for out in outputs:
            if out.get("output_type") == "error":
                problems.append(f"{where}: error output ({out.get('ename')}: {out.get('evalue')})")
            if out.get("output_type") == "stream" and out.get("name") == "stderr" and "Traceback" in "".join(out.get("text", "")):
                problems.append(f"{where}: a traceback in stderr")
            blob = json.dumps({k: v for k, v in out.items() if k != "data"}) + json.dumps(
                {k: v for k, v in out.get("data", {}).items() if k.startswith("text/")})
            m = ABSOLUTE_PATH.search(blob)
            if m:
                problems.append(f"{where}: output holds an absolute path ({m.group(0)}...)")
        if outputs and n is None:
            problems.append(f"{where}: outputs without an execution count")
        if executed:
            count += 1
            if n != count:
                problems.append(f"{where}: execution count {n}, expected {count} (run top to bottom in a fresh kernel)")
        elif outputs or n is not None:
            problems.append(f"{where}: exercise notebooks are committed without outputs")
    return problems


def lint() -> list[str]:
    problems = []
    for folder in LESSON_DIRS:
        for path in sorted((ROOT / folder).glob("*.ipynb")):
            if not LESSON_NAME.match(path.name):
                problems.append(f"{folder}/{path.name}: lesson files are named NN_name.ipynb")
            problems += lint_notebook(path, executed=(folder != "exercises"))
    names = {f: {p.name for p in lessons(f)} for f in LESSON_DIRS}
    for n in names["notebooks"] ^ names["solutions"]:
        problems.append(f"{n}: a lesson needs both notebooks/{n} and solutions/{n}")
    return problems


# ----------------------------------------------------------------------------- widget fallbacks

# A widget output is a reference to a widget model. JupyterLab draws it from the kernel, or from the state
# saved in `metadata.widgets`, but only in a trusted notebook; an untrusted one (every fresh clone) shows the
# output's other formats instead. The ones ipywidgets leaves there are its repr, `interactive(children=(...`.
# So each widget output gets a fallback made from the saved state: a sentence naming the controls and
# their settings, and the output the widget showed at those settings (its plot, its text).
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
HTML_TAG = re.compile(r"<[^>]+>")


def widget_models(state: dict, model_id: str, seen: set | None = None) -> list[dict]:
    """The model `model_id` and every model it refers to (children, outputs...), depth first, in order."""
    seen = set() if seen is None else seen
    if model_id in seen or model_id not in state:
        return []
    seen.add(model_id)
    found = [state[model_id]]

    def refs(value):
        if isinstance(value, str) and value.startswith("IPY_MODEL_"):
            yield value[len("IPY_MODEL_"):]
        elif isinstance(value, list):
            for v in value:
                yield from refs(v)

    for key, value in sorted(state[model_id].get("state", {}).items(), key=lambda kv: kv[0] != "children"):
        for ref in refs(value):
            found += widget_models(state, ref, seen)
    return found


def control_setting(model: dict) -> str | None:
    """'smoothing α = 1', 'activation = gelu', 'attention: on' for a control; None for anything else."""
    st = model.get("state", {})
    description = " ".join(str(st.get("description") or "").split())
    if not description or model.get("model_name") == "OutputModel":
        return None
    if "_options_labels" in st:
        index = st.get("index")
        if not isinstance(index, int):
            return None
        value = " ".join(st["_options_labels"][index].split())
    elif isinstance(st.get("value"), bool):
        return f"{description}: {'on' if st['value'] else 'off'}"
    elif isinstance(st.get("value"), (int, float)):
        value = f"{st['value']:g}"
    elif isinstance(st.get("value"), str):
        value = " ".join(st["value"].split())
    else:
        return None
    return f"{description} = {value}"


def joined(text) -> str:
    return "".join(text) if isinstance(text, list) else str(text)


def widget_fallback(state: dict, model_id: str) -> dict:
    """The other formats of a widget output, made from its saved state: `text/plain` always (never the
    repr), and `text/html` with the plot where the widget shows more than text."""
    import html

    models = widget_models(state, model_id)
    controls = [c for c in map(control_setting, models) if c]
    shown = [o for m in models if m.get("model_name") == "OutputModel" for o in m["state"].get("outputs", [])]
    if not any(m.get("model_name") == "OutputModel" for m in models):   # a display, e.g. a progress bar
        texts = [" ".join(HTML_TAG.sub("", html.unescape(str(m["state"]["value"]))).split()) for m in models
                 if m.get("model_name") in ("HTMLModel", "LabelModel") and m["state"].get("value")]
        return {"text/plain": " ".join(t for t in texts if t) or "(a widget: run the notebook to see it)"}
    sentence = (f"Interactive: {', '.join(controls) or 'no controls'}. Run the notebook to move the controls; "
                f"the output below is at these settings.")
    plain, rich, has_rich = [sentence], [f"<p><em>{html.escape(sentence)}</em></p>"], False
    for out in shown:
        data = out.get("data", {})
        if out.get("output_type") == "stream":
            plain.append(joined(out.get("text", "")).rstrip("\n"))
            rich.append(f"<pre>{html.escape(plain[-1])}</pre>")
        elif "image/png" in data:
            has_rich = True
            plain.append("[a plot]")
            rich.append(f'<img src="data:image/png;base64,{joined(data["image/png"]).strip()}" '
                        f'alt="the plot at these settings"/>')
        elif "text/html" in data:
            has_rich = True
            rich.append(joined(data["text/html"]))
            text = re.sub(r"</p>|</div>|<br\s*/?>", "\n", rich[-1])                  # its text, not its repr
            plain.append("\n".join(" ".join(line.split()) for line in html.unescape(HTML_TAG.sub("", text)).split("\n")).strip())
        elif "text/plain" in data:
            plain.append(joined(data["text/plain"]).rstrip("\n"))
            rich.append(f"<pre>{html.escape(plain[-1])}</pre>")
    bundle = {"text/plain": "\n".join(p for p in plain if p)}
    if has_rich:
        bundle["text/html"] = "\n".join(rich)
    return bundle


def widget_outputs(nb: dict):
    """(cell index, output) for every widget output of a notebook."""
    for i, cell in enumerate(nb.get("cells", [])):
        for out in cell.get("outputs", []) if cell.get("cell_type") == "code" else []:
            if WIDGET_VIEW in out.get("data", {}):
                yield i, out


def saved_widget_state(nb: dict) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def add_widget_fallbacks(nb: dict) -> dict:
    """Give every widget output whose model is saved with the notebook its fallback (in place)."""
    state = saved_widget_state(nb)
    for _, out in widget_outputs(nb):
        model_id = out["data"][WIDGET_VIEW].get("model_id")
        if model_id in state:
            out["data"] = {WIDGET_VIEW: out["data"][WIDGET_VIEW],
                           **{k: split_source(v) for k, v in widget_fallback(state, model_id).items()}}
    return nb


def widget_fallback_problems(nb: dict) -> list[str]:
    state, problems = saved_widget_state(nb), []
    for i, out in widget_outputs(nb):
        model_id = out["data"][WIDGET_VIEW].get("model_id")
        if model_id not in state:
            problems.append(f"cell {i}: widget {model_id} is not saved in metadata.widgets (JupyterLab would show "
                            f"'model not found'): execute the notebook with `python tools/course.py execute`")
        elif {k: joined(v) for k, v in out["data"].items() if k != WIDGET_VIEW} != widget_fallback(state, model_id):
            problems.append(f"cell {i}: the widget output's fallback (what an untrusted notebook shows) is not the "
                            f"one its saved state gives: run `python tools/course.py tidy`")
    return problems


def tidied(nb: dict) -> dict:
    """The notebook with the metadata JupyterLab writes (kernelspec, language_info, widget state numbers) and
    its widget fallbacks; its outputs otherwise as they are."""
    return add_widget_fallbacks({**nb, "metadata": clean_metadata(nb.get("metadata", {}))})


def tidy(paths: list[Path], check: bool = False) -> list[str]:
    """Rewrite committed notebooks in place, without running them (idempotent): what `tidied` gives."""
    problems = []
    for path in paths:
        text = nb_text(tidied(read_nb(path)))
        if text != path.read_text(encoding="utf-8"):
            if check:
                rel = path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)
                problems.append(f"{rel}: not tidy: run `python tools/course.py tidy`")
            else:
                atomic_write(path, text)
    return problems


# ----------------------------------------------------------------------------- the line of classes

IN_THE_GPT = "**In the GPT:**"


def gpt_module_types() -> set:
    """The classes of the modules a GPT is made of (lesson 17's GPT, every part of it)."""
    sys.path.insert(0, str(ROOT))
    from minillm.model import GPT, GPTConfig
    model = GPT(GPTConfig(block_size=8, vocab_size=10, n_layer=1, n_head=2, n_embd=8))
    return {type(m) for m in model.modules()}


def class_line_problems() -> list[str]:
    """Each lesson whose module exports nn.Module classes says in one markdown line that starts
    with **In the GPT:** what of it the GPT uses; every exported class the GPT is not made of
    must be named there (in backticks), so that no learner takes a teaching class for the
    real one."""
    import importlib
    import inspect

    import torch.nn as nn

    used = gpt_module_types()
    problems = []
    for nb_path in lessons("notebooks"):
        module = build_module(nb_path)
        if module is None:
            continue
        names = public_names(module.text)
        mod = importlib.import_module(f"minillm.{module.name}")
        classes = [n for n in names if inspect.isclass(getattr(mod, n, None)) and issubclass(getattr(mod, n), nn.Module)]
        if not classes:
            continue
        lines = [line for cell in read_nb(nb_path)["cells"] if cell["cell_type"] == "markdown"
                 for line in source(cell).split("\n") if line.lstrip("#-* ").startswith(IN_THE_GPT.strip("*"))
                 or IN_THE_GPT in line]
        rel = f"notebooks/{nb_path.name}"
        if len(lines) != 1:
            problems.append(f"{rel}: needs one markdown line starting with {IN_THE_GPT} (what of "
                            f"{', '.join(classes)} the GPT uses), found {len(lines)}")
            continue
        for name in classes:
            if getattr(mod, name) not in used and f"`{name}`" not in lines[0]:
                problems.append(f"{rel}: the GPT does not use `{name}`; its {IN_THE_GPT} line must name it and "
                                f"say what the GPT uses instead")
    return problems


# ----------------------------------------------------------------------------- execute

def execute(path: Path, timeout: int = 1800) -> None:
    """Run a notebook top to bottom in a fresh kernel in its own folder, and save it
    with tidy metadata."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    # One torch thread unless the caller chose: on a small shared machine torch's thread pool made
    # steps 100x slower and left kernels idle until nbclient timed out; one thread is also what
    # the test suite uses, and it makes a lesson's committed run reproducible bit for bit.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    runs = Path(path).parent / "runs" / "lesson20"     # lesson 20 resumes a run it finds there: start fresh
    if Path(path).name == "20_training.ipynb" and Path(path).parent.name == "notebooks" and runs.is_dir():
        import shutil
        shutil.rmtree(runs)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", record_timing=False,
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute()
    data = json.loads(nbformat.writes(nb))
    data["metadata"] = clean_metadata(data["metadata"])
    for cell in data["cells"]:
        cell.get("metadata", {}).pop("execution", None)
    atomic_write(path, nb_text(add_widget_fallbacks(data)))


# ----------------------------------------------------------------------------- text form

CELL_MARK = re.compile(r"^# %%( \[markdown\])?( tags=\[(.*)\])?$")


def unpack(nb: dict) -> str:
    parts = []
    for cell in nb["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        tag = f" tags=[{','.join(tags)}]" if tags else ""
        text = source(cell).rstrip()
        if cell["cell_type"] == "markdown":  # as comments, so the file stays valid Python
            text = "\n".join(f"# {line}" if line else "#" for line in text.split("\n"))
        kind = " [markdown]" if cell["cell_type"] == "markdown" else ""
        parts.append(f"# %%{kind}{tag}\n{text}\n")
    return "\n".join(parts)


def pack(text: str) -> dict:
    cells, current = [], None
    for line in text.split("\n"):
        m = CELL_MARK.match(line)
        if m:
            current = {"cell_type": "markdown" if m.group(1) else "code", "metadata": {}, "lines": []}
            if m.group(3):
                current["metadata"]["tags"] = m.group(3).split(",")
            cells.append(current)
        elif current is not None:
            current["lines"].append(line)
    out = []
    for c in cells:
        if c["cell_type"] == "markdown":
            c["lines"] = [l[2:] if l.startswith("# ") else ("" if l == "#" else l) for l in c["lines"]]
    for i, c in enumerate(cells):
        cell = {"cell_type": c["cell_type"], "id": f"cell-{i:03d}", "metadata": c["metadata"],
                "source": split_source("\n".join(c["lines"]).strip("\n"))}
        if c["cell_type"] == "code":
            cell.update(outputs=[], execution_count=None)
        out.append(cell)
    return {"cells": out, "metadata": clean_metadata({}), "nbformat": 4, "nbformat_minor": 5}


# ----------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    for name in ("export", "exercises"):
        p = sub.add_parser(name)
        p.add_argument("--check", action="store_true", help="write nothing; fail if anything is out of date")
    sub.add_parser("lint")
    p = sub.add_parser("tidy", help="rewrite notebooks in place without running them: metadata, widget fallbacks")
    p.add_argument("--check", action="store_true", help="write nothing; fail if a notebook is not tidy")
    p.add_argument("notebooks", nargs="*", type=Path)
    p = sub.add_parser("execute")
    p.add_argument("notebooks", nargs="+", type=Path)
    p = sub.add_parser("unpack")
    p.add_argument("notebook", type=Path)
    p = sub.add_parser("pack")
    p.add_argument("text", type=Path)
    p.add_argument("notebook", type=Path)
    args = parser.parse_args(argv)

    if args.cmd in ("export", "exercises"):
        problems = (export if args.cmd == "export" else exercises)(check=args.check)
    elif args.cmd == "lint":
        problems = lint()
    elif args.cmd == "tidy":
        problems = tidy([p.resolve() for p in args.notebooks] or
                        [p for folder in LESSON_DIRS if folder != "exercises" for p in lessons(folder)], check=args.check)
    elif args.cmd == "execute":
        for path in args.notebooks:
            print(f"executing {path}", flush=True)
            execute(path.resolve())
        problems = []
    elif args.cmd == "unpack":
        sys.stdout.write(unpack(read_nb(args.notebook)))
        return 0
    else:
        atomic_write(args.notebook, nb_text(pack(args.text.read_text(encoding="utf-8"))))
        return 0
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
