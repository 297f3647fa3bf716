"""The HTML viewer's first screen: each pane opens on the graph's inputs at a readable scale.

A quantized PP-OCR cls graph is ~14,000 px wide once laid out (every weight's DequantizeLinear is a
source box), and its input sits at the far right. Fitting that width shrank it to 0.3 with the origin
at the top left: the "after" pane opened on blank space. These tests read the screenshot's pixels.
"""
from __future__ import annotations

import io

import numpy as np
import pytest

import browser
import zoo
from refold import cli

READABLE = 0.6  # smallest scale at which a box's 12 px op name is still legible
# node fills from viewer.css: changed, added, removed, closed group
FILLS = np.array([(0xFF, 0xF1, 0xC9), (0xDF, 0xF5, 0xE1), (0xFB, 0xE0, 0xE0), (0xEE, 0xF1, 0xF7)])
MIN_FILL_PIXELS = 3000  # about three boxes' fill at READABLE


@pytest.fixture(scope="module")
def quantized_cls_report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cls_quant")
    calib, out, page = folder / "calib.npz", folder / "q.onnx", folder / "q.html"
    np.savez(calib, x=np.random.default_rng(0).random((8, 3, 48, 192), dtype=np.float32))
    assert cli.main(["run", zoo.ppocr_path("cls"), "-p", "fuse-conv-bn", "-p", "quantize:calibration=minmax",
                     "--data", str(calib), "-o", str(out), "--report", str(page), "--no-check"]) == 0
    return str(page)


# For each pane: its svg's rect, the rects of the boxes of the nodes that read a graph input, and the
# scale a box is drawn at on screen (its drawn width over its laid-out width).
_FIRST_SCREEN = """
return window.refoldViewer.data.sides.map((side, i) => {
  const pane = document.getElementById('pane-' + 'ab'[i]);
  const r = pane.querySelector('svg.graph').getBoundingClientRect();
  const inputs = new Set(side.inputs.map((p) => p[0]));
  const first = side.nodes.filter((n) => n.i.some((p) => p && !p[3] && inputs.has(p[0])));
  const boxes = first.map((n) => pane.querySelector('g.node[data-key="' + CSS.escape(n.k) + '"] rect'));
  const rect = (e) => { const b = e.getBoundingClientRect(); return [b.left, b.top, b.right, b.bottom]; };
  return {pane: rect(pane.querySelector('svg.graph')), first: first.map((n) => n.k),
          boxes: boxes.filter((b) => b).map(rect),
          scale: boxes[0] ? boxes[0].getBoundingClientRect().width / boxes[0].width.baseVal.value : 0,
          dpr: window.devicePixelRatio};
});
"""


def _fill_pixels(png: bytes, box: list[float], dpr: float) -> int:
    """How many pixels inside `box` (CSS px) carry a node fill colour."""
    from PIL import Image

    img = Image.open(io.BytesIO(png)).convert("RGB")
    left, top, right, bottom = (round(v * dpr) for v in box)
    px = np.asarray(img.crop((left, top, min(right, img.width), min(bottom, img.height))), dtype=np.int16)
    near = (np.abs(px[:, :, None, :] - FILLS[None, None]) <= 3).all(-1).any(-1)
    return int(near.sum())


def _first_screen(driver, page: str, shot_path):
    browser.open_page(driver, page)
    panes = driver.execute_script(_FIRST_SCREEN)
    png = driver.get_screenshot_as_png()
    shot_path.write_bytes(png)
    return panes, png


def test_both_panes_open_on_the_inputs_of_a_wide_quantized_graph(quantized_cls_report, tmp_path):
    driver = browser.chrome(tmp_path)
    try:
        panes, png = _first_screen(driver, quantized_cls_report, tmp_path / "first_screen.png")
    finally:
        driver.quit()
    problems = []
    for side, p in zip(("before", "after"), panes):
        fill = _fill_pixels(png, p["pane"], p["dpr"])
        if fill < MIN_FILL_PIXELS:
            problems.append(f"{side} pane: {fill} node-fill pixels on the first screen")
        if not p["boxes"]:
            problems.append(f"{side} pane: no box for the nodes reading the graph input")
        left, top, right, bottom = p["pane"]
        for b in p["boxes"]:
            if not (left <= b[0] and b[2] <= right and top <= b[1] and b[3] <= bottom):
                problems.append(f"{side} pane: input node {p['first']} at {b} lies outside the pane {p['pane']}")
        if p["scale"] < READABLE:
            problems.append(f"{side} pane: drawn at scale {p['scale']:.2f}")
    assert not problems, "\n".join(problems)

def test_a_graph_that_fits_at_a_readable_scale_opens_whole(tmp_path):
    out, page = tmp_path / "o.onnx", tmp_path / "r.html"
    assert cli.main(["run", "example:tiny_cnn", "-p", "fuse-conv-bn", "-o", str(out), "--report", str(page)]) == 0
    driver = browser.chrome(tmp_path)
    try:
        browser.open_page(driver, str(page))
        inside = driver.execute_script("""
          return ['a', 'b'].map((s) => {
            const r = document.querySelector('#pane-' + s + ' svg.graph').getBoundingClientRect();
            return [...document.querySelectorAll('#pane-' + s + ' g.node')].every((g) => {
              const b = g.getBoundingClientRect();
              return b.left >= r.left && b.right <= r.right && b.top >= r.top && b.bottom <= r.bottom;
            });
          })""")
    finally:
        driver.quit()
    assert inside == [True, True]
