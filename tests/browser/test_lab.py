"""Notebooks 02, 03 and 04 in JupyterLab, in headless Chromium: run all cells, then move every slider of the
panels and watch the figure change (03 reads the attention file 02 writes, so they run in this order).
Runs with ADKIT_BROWSER_TEST=1 (``make test-browser``), about two minutes.

The panels are ``adkit.plots.widget_panel`` boxes: a row of widgets over an Output widget that shows the
figure as an ``<img>``. ipywidgets 8 draws sliders with noUiSlider; the test focuses a slider's handle
and presses an arrow key (right, or left at the maximum), then waits for the Output's image to change.
"""

from __future__ import annotations

import os
import re

import pytest

pytestmark = pytest.mark.browser

if os.environ.get("ADKIT_BROWSER_TEST") != "1":
    pytest.skip("real-browser test (JupyterLab in headless Chromium): set ADKIT_BROWSER_TEST=1, as make test-browser "
                "does", allow_module_level=True)
pytest.importorskip("playwright.sync_api", reason="playwright is missing: pip install -e '.[test]'")

from playwright.sync_api import Error as PlaywrightError  # noqa: E402
from playwright.sync_api import Locator, Page, expect  # noqa: E402

RUN_ALL_MS = 180_000  # all cells of one notebook on a 2-core machine (about 10 s on the tiny run)
REDRAW_MS = 60_000  # one redraw after a widget moved
STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
ERROR = re.compile(r"Traceback|^\w*(Error|Exception)\b", re.MULTILINE)
WIDGET_AS_TEXT = ("VBox(", "HBox(", "Slider(", "Dropdown(", "Output(", "Error displaying widget", "Loading widget")

# Every code cell has a number, or a cell failed (then Run All stops and later cells keep "[ ]").
RAN = """([nb, stderr, error]) => {
  const failed = [...nb.querySelectorAll(stderr)].some(e => new RegExp(error, "m").test(e.textContent));
  if (failed) return "error";
  const prompts = [...nb.querySelectorAll(".jp-CodeCell .jp-InputPrompt")];
  return prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p.textContent)) ? "done" : false;
}"""

# The panel's figure is a complete image whose source differs from the one before.
REDRAWN = """([panel, before]) => {
  const img = panel.querySelector(".widget-output img");
  return img !== null && img.complete && img.naturalWidth > 0 && img.getAttribute("src") !== before;
}"""


def outputs_text(nb: Locator) -> list[str]:
    return nb.locator(".jp-OutputArea-output").all_inner_texts()


def cell_errors(nb: Locator) -> list[str]:
    return [t for t in nb.locator(STDERR).all_inner_texts() if ERROR.search(t)]


def open_and_run_all(page: Page, lab, name: str) -> Locator:
    """Opens ``notebooks/NAME.ipynb`` in a fresh workspace, runs all cells (Run menu) and waits for the end."""
    page.goto(f"{lab.url}/lab/tree/notebooks/{name}.ipynb?reset&token={lab.token}")
    nb = page.locator(".jp-NotebookPanel")
    expect(nb).to_have_count(1, timeout=90_000)
    expect(nb.locator(".jp-CodeCell").first).to_be_visible(timeout=90_000)
    status = page.locator(".jp-StatusBar-Widget")
    expect(nb.locator(".jp-KernelName")).not_to_contain_text("No Kernel", timeout=90_000)
    expect(status).to_contain_text(re.compile(r"\| Idle"), timeout=90_000)  # the kernel started
    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()
    try:
        state = page.wait_for_function(RAN, arg=[nb.element_handle(), STDERR, ERROR.pattern],
                                       timeout=RUN_ALL_MS).json_value()
    except PlaywrightError as error:
        prompts = nb.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
        pytest.fail(f"{name}: Run All Cells did not finish in {RUN_ALL_MS / 1000:.0f} s (prompts {prompts}): {error}\n"
                    f"server log:\n{lab.tail()}")
    assert state == "done", f"{name}: a cell failed:\n" + "\n".join(cell_errors(nb))
    expect(status).to_contain_text(re.compile(r"\| Idle"), timeout=60_000)
    return nb


def panels(nb: Locator, count: int) -> list[Locator]:
    """The notebook's widget panels (a widget row over an Output widget), once each shows its figure."""
    boxes = nb.locator(".jp-OutputArea-output > .widget-vbox:has(> .widget-output)")
    expect(boxes).to_have_count(count, timeout=60_000)
    for box in boxes.all():
        expect(box.locator(".widget-output img")).to_have_count(1, timeout=60_000)
        expect(box.locator(".widget-output img")).to_be_visible()
    return boxes.all()


def figure_src(panel: Locator) -> str:
    img = panel.locator(".widget-output img")
    expect(img).to_have_count(1)
    return img.get_attribute("src")


def wait_redrawn(panel: Locator, before: str, what: str) -> None:
    try:
        panel.page.wait_for_function(REDRAWN, arg=[panel.element_handle(), before], timeout=REDRAW_MS)
    except PlaywrightError as error:
        pytest.fail(f"{what}: the panel's figure did not change ({error})")


def slider(panel: Locator, name: str) -> Locator:
    """The ipywidgets slider labelled ``name``, checked to be a real noUiSlider widget."""
    found = panel.locator(f".widget-slider:has(> .widget-label:text-is('{name}'))")
    expect(found).to_have_count(1)
    expect(found.locator(".noUi-target .noUi-handle[role='slider']")).to_be_visible()
    return found


def shown(panel: Locator, name: str) -> bool:
    """Whether the panel shows slider ``name`` (a window record hides its one-step decision slider)."""
    return panel.locator(f".widget-slider:has(> .widget-label:text-is('{name}'))").is_visible()


def move_slider(panel: Locator, name: str) -> str:
    """One arrow key on the focused handle of slider ``name`` (right, or left at its maximum); waits for the
    readout and then the figure to change. Returns ``"old -> new"`` as the readout shows it."""
    found = slider(panel, name)
    handle, readout = found.locator(".noUi-handle"), found.locator(".widget-readout")
    expect(readout).to_have_text(re.compile(r"\S"))  # the slider shows its value before any move
    before_value, before_src = readout.text_content(), figure_src(panel)  # (inner text can lag a lazy render)
    at_max = float(handle.get_attribute("aria-valuenow")) >= float(handle.get_attribute("aria-valuemax"))
    handle.focus()
    handle.press("ArrowLeft" if at_max else "ArrowRight")
    expect(readout).not_to_have_text(before_value, timeout=10_000)
    wait_redrawn(panel, before_src, f"slider {name} ({before_value} -> {readout.text_content()})")
    return f"{before_value} -> {readout.text_content()}"


def choose(panel: Locator, name: str) -> str:
    """Picks another option of dropdown ``name`` and waits for the figure to change."""
    select = panel.locator(f".widget-dropdown:has(> .widget-label:text-is('{name}')) select")
    expect(select).to_be_visible()
    before_value, before_src = select.input_value(), figure_src(panel)
    options = select.locator("option").evaluate_all("os => os.map(o => o.value)")
    target = next(o for o in options if o != before_value)
    select.select_option(target)
    wait_redrawn(panel, before_src, f"dropdown {name} ({before_value} -> {target})")
    return f"{before_value} -> {target}"


def check_clean(page: Page, nb: Locator, name: str) -> None:
    """No widget shown as its text repr, no failed cell, no uncaught page error, nothing asked off 127.0.0.1."""
    texts = outputs_text(nb)
    as_text = [t[:300] for t in texts if any(s in t for s in WIDGET_AS_TEXT)]
    assert not as_text, f"{name}: widgets shown as text: {as_text}"
    assert not cell_errors(nb), f"{name}: cell errors:\n" + "\n".join(cell_errors(nb))
    assert not page.errors, f"{name}: uncaught errors in the page: {page.errors}"
    assert not page.blocked, f"{name}: requests off 127.0.0.1 (aborted): {page.blocked}"


def screenshots(page: Page, boxes: list[Locator], shoot, name: str) -> None:
    for i, box in enumerate(boxes):
        print(shoot(box, f"{name}-panel{i + 1}"))
    boxes[-1].scroll_into_view_if_needed()
    print(shoot(page, name))


def test_02_attention_sliders_redraw(page, lab, shoot):
    """Both explorers (training windows, then rollouts): layer, head and sample sliders, and the decision
    slider where the record has more than one decision step."""
    nb = open_and_run_all(page, lab, "02_extract_attention")
    boxes = panels(nb, 2)
    moved = {}
    for i, box in enumerate(boxes):
        for name in ("layer", "head", "sample", "decision"):
            if name == "decision" and not shown(box, name):
                continue
            moved[f"panel {i + 1} {name}"] = move_slider(box, name)
    assert "panel 2 decision" in moved, "the rollout explorer's decision slider is hidden"
    assert "panel 1 decision" not in moved, "the windows explorer shows a decision slider with one step"
    print(moved)
    check_clean(page, nb, "02")
    screenshots(page, boxes, shoot, "02_extract_attention")


def test_03_metrics_explorer_and_budget_figure(page, lab, shoot):
    """03's explorer (layer, head and sample sliders) and its last section: the budget coverage figure and table."""
    nb = open_and_run_all(page, lab, "03_metrics")
    [box] = panels(nb, 1)
    moved = {name: move_slider(box, name) for name in ("layer", "head", "sample")}
    print(moved)
    last = nb.locator(".jp-CodeCell").last
    expect(last.locator(".jp-OutputArea-output img")).to_have_count(1)  # the coverage figure, drawn
    expect(last.locator(".jp-OutputArea-output table")).to_contain_text("top-k: all")
    check_clean(page, nb, "03")
    last.scroll_into_view_if_needed()
    screenshots(page, [box], shoot, "03_metrics")


def test_04_compressor_widgets_redraw(page, lab, shoot):
    """The keep explorer: the strategy dropdown and the budget slider."""
    nb = open_and_run_all(page, lab, "04_compressors")
    [box] = panels(nb, 1)
    moved = {"strategy": choose(box, "strategy"), "budget": move_slider(box, "budget")}
    print(moved)
    check_clean(page, nb, "04")
    screenshots(page, [box], shoot, "04_compressors")
