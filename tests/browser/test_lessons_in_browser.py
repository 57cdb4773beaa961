"""Every lesson with a widget, opened in JupyterLab in Chromium the way a learner meets it.

For each lesson, in one page:
1. As a fresh clone shows it (untrusted, before any run): the kernel starts and the notebook is not marked
   changed; no widget output shows a Python repr or "Error displaying widget"; saving it unchanged from
   the browser (File ▸ Save) writes the committed bytes back.
2. Run ▸ Run All Cells (through the menu), then wait for the kernel to go idle with no `[*]` left and
   every code cell run, without an error output.
3. Every widget rendered: controls drawn, no error text, no repr. Each control gets a real event through
   the page (a slider dragged with the mouse, a dropdown option chosen, a checkbox clicked) and the
   widget's output must redraw (its picture or text changes) without a traceback. No control label is
   cut off. A widget that takes over 2 s to redraw must not redraw while a slider is dragged
   (continuous_update=False), or a drag queues one slow redraw per step.
4. The browser console logged no error the whole time.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from course import read_nb, saved_widget_state, widget_models, widget_outputs

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[2]


def has_widgets(nb: dict) -> bool:
    return any(widget_outputs(nb)) or any(c["cell_type"] == "code" and "ipywidgets" in "".join(c["source"])
                                          for c in nb["cells"])


LESSONS = [p.name for p in sorted((ROOT / "notebooks").glob("*.ipynb")) if has_widgets(read_nb(p))]
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
REPR = re.compile(r"\b[A-Z]\w*\((children|value|description)=")   # ipywidgets' repr: interactive(children=(...
RUN_ALL_TIMEOUT = 900        # s, lesson 20 trains (MINILLM_QUICK=1 keeps it short)
REDRAW_TIMEOUT = 60          # s, one redraw after one event
SLOW = 2.0                   # s, a redraw slower than this must not run on every step of a drag

# The notebook panel and its model, read through window.jupyterapp (what the page shows is checked in the DOM).
PANEL = "window.jupyterapp.shell.currentWidget"
STATE_JS = f"""() => {{
    const panel = {PANEL};
    if (!panel || !panel.content || !panel.context.isReady) return null;
    const kernel = panel.sessionContext.session?.kernel;
    const cells = panel.content.model.cells;
    let running = 0, unrun = 0, errors = [];
    for (let i = 0; i < cells.length; i++) {{
        const c = cells.get(i);
        if (c.type !== 'code') continue;
        if (c.executionState === 'running') running++;
        if (c.executionCount === null) unrun++;
        for (let j = 0; j < c.outputs.length; j++) {{
            const o = c.outputs.get(j).toJSON();
            if (o.output_type === 'error') errors.push(`cell ${{i}}: ${{o.ename}}: ${{o.evalue}}`);
        }}
    }}
    const stars = [...document.querySelectorAll('.jp-InputArea-prompt')].filter(e => e.textContent.includes('*')).length;
    return {{kernel: kernel ? kernel.status : null, running, unrun, errors, stars,
             dirty: panel.context.model.dirty, tabDirty: !!document.querySelector('.jp-mod-current.jp-mod-dirty, .lm-TabBar-tab.jp-mod-dirty'),
             language: panel.context.model.getMetadata('language_info') || null}};
}}"""


def state(page) -> dict | None:
    return page.evaluate(STATE_JS)


def wait_for(page, what: str, predicate, timeout: float, interval: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = state(page)
        if last is not None and predicate(last):
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last state {last}")


def idle(s: dict) -> bool:
    return s["kernel"] == "idle" and s["running"] == 0 and s["stars"] == 0


def open_lesson(page, lab, name: str) -> None:
    page.goto(f"{lab.url}/lab/tree/notebooks/{name}?token={lab.token}&reset")
    page.wait_for_selector(".jp-NotebookPanel .jp-Notebook", timeout=120_000)
    # ready: the kernel answered (JupyterLab writes its language_info into the notebook then)
    wait_for(page, "the kernel to start", lambda s: idle(s) and s["language"] and s["language"].get("version"), 180)
    time.sleep(1.0)


def fresh_view_problems(page, lab, name: str) -> list[str]:
    problems = []
    s = state(page)
    if s["dirty"] or s["tabDirty"]:
        on_disk = json.loads((lab.root / "notebooks" / name).read_text(encoding="utf-8"))["metadata"]
        in_lab = page.evaluate(f"() => {PANEL}.context.model.toJSON().metadata")
        differs = sorted(k for k in set(on_disk) | set(in_lab) if on_disk.get(k) != in_lab.get(k))
        problems.append(f"opening the lesson marks it changed (metadata that differs: {differs})")
    # textContent, not innerText: cells out of view are not rendered (content-visibility) and have no innerText
    text = page.evaluate("() => [...document.querySelectorAll('.jp-Notebook .jp-Cell-outputArea')]"
                         ".map(o => o.textContent).join('\\n')")
    for bad in sorted(set(m.group(0) for m in REPR.finditer(text))):
        problems.append(f"before running, a widget output shows a Python repr: {bad}...")
    if "Error displaying widget" in text:
        problems.append("before running, a widget output shows 'Error displaying widget'")
    # saved unchanged from the browser (File > Save): the same bytes
    copy = lab.root / "notebooks" / name
    committed = copy.read_bytes()
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^File$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Save( Notebook)?$")).first.click()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and copy.stat().st_mtime_ns == lab.mtimes[name]:
        time.sleep(0.25)
    if copy.stat().st_mtime_ns == lab.mtimes[name]:
        problems.append("File ▸ Save did not save the notebook within 30 s")
    elif (saved := settled(copy, time.monotonic() + 10)) != committed:
        import difflib
        diff = difflib.unified_diff(committed.decode().splitlines(), saved.decode().splitlines(),
                                    "committed", "saved by JupyterLab", n=2, lineterm="")
        problems.append("saved unchanged from JupyterLab, the notebook's bytes change (`python tools/course.py tidy` "
                        "writes what JupyterLab writes):\n" + "\n".join(line[:160] for line in list(diff)[:30]))
    return problems


def settled(path, deadline: float) -> bytes:
    """The file's bytes once a save has finished: Jupyter's server writes a notebook in place (after a
    backup copy), so the file can be read empty or half-written just after its mtime changes. Waits until
    it is whole JSON and unchanged for half a second (or the deadline passes), and returns it."""
    last = None
    while True:
        stamp, data = path.stat().st_mtime_ns, path.read_bytes()
        try:
            json.loads(data)
            whole = True
        except ValueError:
            whole = False
        if whole and (stamp, data) == last or time.monotonic() > deadline:
            return data
        last = (stamp, data) if whole else None
        time.sleep(0.5)


def run_all(page) -> dict:
    page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click()
    page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click()
    # JupyterLab marks every queued cell [*] and clears its count as soon as Run All is chosen
    wait_for(page, "Run All to start", lambda s: s["running"] > 0 or s["stars"] > 0 or s["errors"], 60, interval=0.05)
    return wait_for(page, "Run All to finish", lambda s: idle(s) or s["errors"], RUN_ALL_TIMEOUT, interval=1.0)


def saved_sliders(name: str) -> list[dict[str, bool]]:
    """For each widget of the committed lesson, in order: slider description -> continuous_update."""
    nb = read_nb(ROOT / "notebooks" / name)
    state_ = saved_widget_state(nb)
    found = []
    for _, out in widget_outputs(nb):
        models = widget_models(state_, out["data"][WIDGET_VIEW]["model_id"])
        found.append({m["state"].get("description"): m["state"].get("continuous_update", True)
                      for m in models if m.get("model_name", "").endswith("SliderModel")})
    return found


def output_snapshot(widget) -> str:
    """What the widget's output area shows: its text and its pictures (their data URLs)."""
    return widget.evaluate("""w => [...w.querySelectorAll('.widget-output')].map(o =>
        o.innerText + [...o.querySelectorAll('img')].map(i => i.src).join('|')).join('||')""")


def output_error(widget) -> str | None:
    text = widget.evaluate("""w => [...w.querySelectorAll('.widget-output .jp-OutputArea-output')]
        .filter(o => (o.dataset.mimeType || '').includes('stderr') || (o.dataset.mimeType || '').includes('error'))
        .map(o => o.innerText).join('\\n')""")
    return text if "Traceback" in text or "Error" in text else None


def control_label(control) -> str:
    """The control's description as shown (a checkbox shows it beside the box, not in its label)."""
    return control.evaluate("""c => [...c.querySelectorAll('.widget-label, .widget-label-basic')]
        .map(l => l.innerText.replace(/\u200b/g, '').trim()).find(t => t) || c.className""")


def act(page, control, kind: str) -> str:
    """One real event on a control, through the page; returns what was done."""
    if kind == "slider":
        handle = control.locator(".noUi-handle").first
        track = control.locator(".noUi-target").first.bounding_box()
        box = handle.bounding_box()
        x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        # to the middle of the other half of the track: far enough to reach another value of a slider
        # with only two or three, near enough to stay inside it
        left_half = x < track["x"] + track["width"] / 2
        dx = track["x"] + track["width"] * (0.75 if left_half else 0.25) - x
        page.mouse.move(x, y)
        page.mouse.down()
        page.mouse.move(x + dx, y, steps=8)
        page.mouse.up()
        return f"dragged {dx:+.0f} px"
    if kind == "dropdown":
        select = control.locator("select").first
        options = select.evaluate("s => [s.selectedIndex, s.options.length]")
        select.select_option(index=(options[0] + 1) % options[1])
        return f"chose option {(options[0] + 1) % options[1]}"
    if kind == "checkbox":
        control.locator("input[type=checkbox]").first.click()
        return "clicked"
    if kind == "text":
        box = control.locator("input").first
        box.click()
        box.press("ArrowUp")
        box.press("Enter")
        return "stepped up"
    control.click()
    return "clicked"


CONTROLS = {   # CSS class of an ipywidgets 8 control -> the kind of event it gets
    "widget-slider": "slider", "widget-dropdown": "dropdown", "widget-checkbox": "checkbox",
    "widget-text": "text", "widget-inline-hbox.widget-button": "button", "widget-toggle-button": "button",
}
CONTROL_SELECTOR = ", ".join(f".{c}" for c in CONTROLS)


def kind_of(control) -> str:
    classes = control.get_attribute("class").split()
    return next(kind for css, kind in CONTROLS.items() if all(c in classes for c in css.split(".")))


def widget_problems(page, name: str) -> tuple[list[str], list[str]]:
    problems, log = [], []
    sliders = saved_sliders(name)
    # (cell, output) of every widget output after Run All, from the notebook model; then their DOM nodes
    where = page.evaluate(f"""() => {{
        const cells = {PANEL}.content.model.cells, found = [];
        for (let i = 0; i < cells.length; i++) {{
            const c = cells.get(i);
            if (c.type !== 'code') continue;
            for (let j = 0; j < c.outputs.length; j++)
                if ('{WIDGET_VIEW}' in (c.outputs.get(j).toJSON().data || {{}})) found.push([i, j]);
        }}
        return found;
    }}""")
    if len(where) != len(sliders):
        problems.append(f"{len(where)} widget outputs after Run All, the committed lesson has {len(sliders)}")
    cells = page.locator(".jp-Notebook .jp-Cell")
    for w, (ci, oi) in enumerate(where):
        widget = cells.nth(ci).locator(".jp-Cell-outputArea > .jp-OutputArea-child").nth(oi).locator(
            ":scope > .jp-OutputArea-output")
        widget.scroll_into_view_if_needed()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "Loading widget" in widget.inner_text():
            time.sleep(0.25)
        text = widget.inner_text()
        if "Error displaying widget" in text or "Loading widget" in text or REPR.search(text):
            problems.append(f"widget {w}: not drawn: {text[:120]!r}")
            continue
        if not widget.locator(".jupyter-widgets").count():
            problems.append(f"widget {w}: no widget drawn in its output")
            continue
        for label in widget.locator(".widget-label").all():
            cut = label.evaluate("l => l.offsetParent !== null && l.innerText.trim() !== '' && l.scrollWidth > l.clientWidth + 1")
            if cut:
                problems.append(f"widget {w}: the label {label.inner_text()!r} is cut off "
                                f"({label.evaluate('l => l.clientWidth')} px wide, needs {label.evaluate('l => l.scrollWidth')} px)")
        if not widget.locator(".widget-output").count():
            log.append(f"widget {w}: a display without controls (e.g. a progress bar), drawn")
            continue
        controls = widget.locator(CONTROL_SELECTOR)
        for c in range(controls.count()):
            control = controls.nth(c)
            kind, label = kind_of(control), control_label(control)
            if control.evaluate("c => !!c.querySelector(':disabled')"):
                continue
            control.scroll_into_view_if_needed()
            if kind == "slider":
                low, high, now = control.locator(".noUi-handle").first.evaluate(
                    "h => ['aria-valuemin', 'aria-valuemax', 'aria-valuenow'].map(a => h.getAttribute(a))")
                if low == high:
                    log.append(f"widget {w}, slider {label!r}: a single value in this run ({low}), nothing to move")
                    continue
            before = output_snapshot(widget)
            did = act(page, control, kind)
            t0 = time.monotonic()
            while time.monotonic() - t0 < REDRAW_TIMEOUT and output_snapshot(widget) == before:
                time.sleep(0.05)
            took = time.monotonic() - t0
            wait_for(page, "the kernel to finish the redraw", idle, REDRAW_TIMEOUT)
            error = output_error(widget)
            if kind == "slider" and control.locator(".noUi-handle").first.get_attribute("aria-valuenow") == now:
                problems.append(f"widget {w}, slider {label!r} ({did}): the drag did not move it from {now}")
            elif error:
                problems.append(f"widget {w}, {kind} {label!r} ({did}): the output shows an error:\n{error[-800:]}")
            elif output_snapshot(widget) == before:
                problems.append(f"widget {w}, {kind} {label!r} ({did}): the output did not change in {REDRAW_TIMEOUT} s")
            else:
                log.append(f"widget {w}, {kind} {label!r}: {did}, redrawn in {took:.2f} s")
                if kind == "slider" and took > SLOW and w < len(sliders) and sliders[w].get(label.strip(), False):
                    problems.append(f"widget {w}, slider {label!r}: a redraw takes {took:.1f} s, and it redraws on "
                                    f"every step of a drag: give it continuous_update=False")
    return problems, log


@pytest.mark.parametrize("name", LESSONS)
def test_lesson_in_the_browser(lab, chromium, name, record_property):
    context = chromium.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    console = []
    page.on("console", lambda m: console.append(f"console.{m.type}: {m.text[:500]}") if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"uncaught: {str(e)[:500]}"))
    started = time.monotonic()
    try:
        open_lesson(page, lab, name)
        problems = fresh_view_problems(page, lab, name)
        s = run_all(page)
        assert not s["errors"], f"{name}: Run All stopped at an error: {s['errors']}"
        assert s["unrun"] == 0, f"{name}: Run All left {s['unrun']} code cells unrun"
        ran = time.monotonic() - started
        more, log = widget_problems(page, name)
        problems += more
        problems += [f"browser {line}" for line in console]
        record_property("seconds", round(time.monotonic() - started, 1))
        print(f"\n{name}: opened and ran in {ran:.0f} s, all in {time.monotonic() - started:.0f} s")
        print("\n".join(f"  {line}" for line in log))
        assert not problems, f"{name}:\n" + "\n".join(f"- {p}" for p in problems)
    finally:
        context.close()
        lab.shutdown_kernels()
