"""What a fresh clone shows in place of a widget (no browser needed: these run in the plain suite).

An untrusted notebook, as every fresh clone is, does not draw widgets: JupyterLab shows the output's
other formats. `tools/course.py` gives each widget output a fallback made from the widget state saved
with the notebook (a sentence with the controls' settings, the plot or text at those settings), and
writes the metadata the way JupyterLab does, so that opening or saving an unchanged lesson changes nothing.
"""
from __future__ import annotations

import copy
import json

import course

PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="


def model(name: str, **state) -> dict:
    module = "@jupyter-widgets/output" if name == "OutputModel" else "@jupyter-widgets/controls"
    return {"model_module": module, "model_module_version": "2.0.0", "model_name": name,
            "state": {"_model_name": name, **state}}


def interactive_notebook(outputs: list[dict], text_plain: str = "interactive(children=(IntSlider(value=3, ...") -> dict:
    state = {
        "box": model("VBoxModel", children=["IPY_MODEL_n", "IPY_MODEL_on", "IPY_MODEL_act", "IPY_MODEL_out"],
                     layout="IPY_MODEL_layout"),
        "n": model("IntSliderModel", description="hidden units", value=3, max=10.0, continuous_update=False),
        "on": model("CheckboxModel", description="residual", value=True),
        "act": model("DropdownModel", description="activation", index=1, _options_labels=["ReLU", "GELU"]),
        "out": model("OutputModel", outputs=outputs),
        "layout": {"model_name": "LayoutModel", "state": {"width": "100%"}},
    }
    view = {"model_id": "box", "version_major": 2, "version_minor": 0}
    cell = {"cell_type": "code", "execution_count": 1, "id": "cell-000", "metadata": {}, "source": ["interact(f)"],
            "outputs": [{"output_type": "display_data", "metadata": {},
                         "data": {course.WIDGET_VIEW: view, "text/plain": [text_plain]}}]}
    return {"cells": [cell], "nbformat": 4, "nbformat_minor": 5,
            "metadata": {"kernelspec": dict(course.KERNELSPEC), "language_info": {"name": "python"},
                         "widgets": {course.WIDGET_STATE: {"state": state, "version_major": 2, "version_minor": 0}}}}


def test_the_fallback_names_the_settings_and_carries_the_output_not_the_repr():
    nb = course.tidied(interactive_notebook([
        {"output_type": "display_data", "metadata": {}, "data": {"image/png": PNG, "text/plain": ["<Figure>"]}},
        {"output_type": "stream", "name": "stdout", "text": "loss 1.25\n"},
    ]))
    data = {k: course.joined(v) for k, v in nb["cells"][0]["outputs"][0]["data"].items() if k != course.WIDGET_VIEW}
    assert set(data) == {"text/plain", "text/html"}
    assert "interactive(" not in data["text/plain"] and "children=" not in data["text/plain"]
    assert data["text/plain"].startswith("Interactive: hidden units = 3, residual: on, activation = GELU.")
    assert data["text/plain"].endswith("[a plot]\nloss 1.25")
    assert f"data:image/png;base64,{PNG}" in data["text/html"] and "<pre>loss 1.25</pre>" in data["text/html"]


def test_a_text_only_widget_falls_back_to_text():
    nb = course.tidied(interactive_notebook([{"output_type": "stream", "name": "stdout", "text": ["a <b>\n"]}]))
    data = nb["cells"][0]["outputs"][0]["data"]
    assert "text/html" not in data
    assert course.joined(data["text/plain"]).endswith("these settings.\na <b>")


def test_a_progress_bar_falls_back_to_its_text():
    state = {"bar": model("HBoxModel", children=["IPY_MODEL_d", "IPY_MODEL_p", "IPY_MODEL_s"]),
             "d": model("HTMLModel", value="training: 100%"), "p": model("FloatProgressModel", value=30.0, max=30.0),
             "s": model("HTMLModel", value="30/30 [00:01&lt;00:00]")}
    assert course.widget_fallback(state, "bar") == {"text/plain": "training: 100% 30/30 [00:01<00:00]"}


def test_tidy_writes_what_jupyterlab_writes_and_is_idempotent():
    nb = course.tidied(interactive_notebook([{"output_type": "stream", "name": "stdout", "text": "x\n"}]))
    meta = nb["metadata"]
    assert meta["kernelspec"] == course.KERNELSPEC
    assert {k: v for k, v in meta["language_info"].items() if k != "version"} == course.LANGUAGE_INFO
    assert meta["language_info"]["version"]
    n = meta["widgets"][course.WIDGET_STATE]["state"]["n"]["state"]
    assert n["max"] == 10 and isinstance(n["max"], int)          # JavaScript writes 10.0 as 10
    assert course.js_numbers([0.5, 1e21, 2.0, True]) == [0.5, 1e21, 2, True]
    again = course.tidied(copy.deepcopy(nb))
    assert course.nb_text(again) == course.nb_text(nb)
    assert not course.widget_fallback_problems(nb)


def test_the_lint_catches_a_repr_and_a_widget_without_saved_state(tmp_path):
    nb = interactive_notebook([{"output_type": "stream", "name": "stdout", "text": "x\n"}])
    nb["metadata"] = course.clean_metadata(nb["metadata"])
    problems = course.widget_fallback_problems(nb)
    assert len(problems) == 1 and "course.py tidy" in problems[0]
    path = tmp_path / "01_x.ipynb"
    path.write_text(course.nb_text(nb), encoding="utf-8")
    assert any("fallback" in p for p in course.lint_notebook(path, executed=True))

    nb = course.tidied(nb)
    assert not course.widget_fallback_problems(nb)
    nb["cells"][0]["outputs"][0]["data"][course.WIDGET_VIEW]["model_id"] = "gone"
    problems = course.widget_fallback_problems(nb)
    assert len(problems) == 1 and "not saved in metadata.widgets" in problems[0]


def test_an_unchanged_notebook_language_info_is_kept():
    meta = {"language_info": {"name": "python", "version": "3.10.4"}}
    assert course.clean_metadata(meta)["language_info"]["version"] == "3.10.4"
    assert json.loads(json.dumps(course.clean_metadata({})))["language_info"]["name"] == "python"


def test_an_html_output_falls_back_to_its_text_and_its_html():
    nb = course.tidied(interactive_notebook([{"output_type": "display_data", "metadata": {}, "data": {
        "text/html": "<p>3 tokens</p><span>R</span><span>O</span>", "text/plain": "<IPython.core.display.HTML object>"}}]))
    data = {k: course.joined(v) for k, v in nb["cells"][0]["outputs"][0]["data"].items()}
    assert data["text/plain"].endswith("these settings.\n3 tokens\nRO")
    assert "IPython.core.display" not in data["text/plain"]
    assert "<span>R</span>" in data["text/html"]
