"""The latent explorer in a real browser (headless chromium) against a real server: the page loads without
console errors, samples are seed-deterministic, the 2-D plane decodes a click, a drawn digit round-trips,
and what the page shows equals what the REST API returns for the same request."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np

from tests.ui.conftest import PLANE_MODEL

WAIT = 30  # seconds for the page to render what it asked the server for


def open_page(browser, server, fragment: str = "") -> None:
    browser.get("about:blank")  # a new document, even when only the fragment differs from the last one
    browser.get_log("browser")  # each page starts with an empty console log
    browser.get(f"{server.http_url}/{fragment}")
    wait_for(browser, "document.getElementById('samples-grid').dataset.renders !== '0'", "the first sample grid")


def wait_for(browser, condition: str, what: str, timeout: float = WAIT):
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout, poll_frequency=0.05).until(
            lambda d: d.execute_script(f"return {condition};"))
    except TimeoutException:
        message = browser.execute_script("return document.getElementById('message').textContent")
        raise AssertionError(f"timed out waiting for {what}; the page says: {message!r}; "
                             f"console: {browser.get_log('browser')}") from None


def renders(browser, canvas: str) -> int:
    return int(browser.execute_script(f"return document.getElementById('{canvas}').dataset.renders"))


def pixels(browser, canvas: str) -> np.ndarray:
    """A canvas's grey values (its red channel) as uint8 (height, width)."""
    width, height, data = browser.execute_script(
        "const c = document.getElementById(arguments[0]);"
        "const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;"
        "const g = []; for (let p = 0; p < d.length; p += 4) g.push(d[p]);"
        "return [c.width, c.height, g];", canvas)
    return np.array(data, np.uint8).reshape(height, width)


def tiles(grid: np.ndarray, side: int = 28) -> np.ndarray:
    rows, columns = grid.shape[0] // side, grid.shape[1] // side
    return grid.reshape(rows, side, columns, side).transpose(0, 2, 1, 3).reshape(-1, side, side)


def infer(server, model: str, inputs: list[dict], outputs: list[str], parameters: dict | None = None) -> dict:
    """The REST API directly, as JSON (the page sends binary tensors: the two must agree)."""
    body = json.dumps({"inputs": inputs, "outputs": [{"name": o} for o in outputs],
                       "parameters": parameters or {}}).encode()
    request = urllib.request.Request(f"{server.http_url}/v2/models/{model}/infer", body,
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        reply = json.loads(response.read())
    return {o["name"]: np.array(o["data"]).reshape(o["shape"]) for o in reply["outputs"]}


def screenshot(browser, path: Path) -> None:
    """The page at rest (nothing busy, no blinking caret) into `path`, unless `path` already shows it: the
    browser's antialiasing differs by a grey level here and there between runs, which is no reason to change
    a file in docs/."""
    from PIL import Image

    wait_for(browser, "document.getElementById('busy').hidden", "the page to be idle")
    browser.execute_script("document.activeElement.blur(); window.scrollTo(0, 0);")
    fresh = path.with_suffix(".new.png")
    browser.save_screenshot(str(fresh))
    if path.exists():
        old, new = (np.asarray(Image.open(p).convert("RGB"), np.int16) for p in (path, fresh))
        if old.shape == new.shape and (np.abs(old - new).max(axis=2) > 8).mean() < 1e-4:
            fresh.unlink()
            return
    fresh.replace(path)


def console_errors(browser) -> list[dict]:
    return [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def set_value(browser, element_id: str, value: object) -> None:
    element = browser.find_element("id", element_id)
    element.clear()
    element.send_keys(str(value))


def message(browser) -> str:
    return browser.execute_script("const m = document.getElementById('message'); return m.hidden ? '' : m.textContent")


def test_the_page_lists_the_models_and_a_seed_always_gives_the_same_grid(browser, explorer_server, docs_dir):
    open_page(browser, explorer_server, "#model=digits-vae")
    options = [o.text for o in browser.find_elements("css selector", "#model option")]
    assert options == ["digits-ae · version 1", "digits-vae · version 1", f"{PLANE_MODEL} · version 1"]
    assert "VAE · latent 8" in browser.find_element("id", "model-info").text
    first = pixels(browser, "samples-grid")
    assert first.shape == (4 * 28, 8 * 28)  # 32 samples, 8 a row
    # the grid is the generator's IMAGES for SEED = 7, 8, …, 38, byte for byte
    api = infer(explorer_server, "digits-vae", [{"name": "SEED", "datatype": "UINT64", "shape": [32, 1],
                                                 "data": list(range(7, 39))}], ["IMAGES"])["IMAGES"]
    np.testing.assert_array_equal(tiles(first), api[:, 0])

    before = renders(browser, "samples-grid")
    set_value(browser, "seed", 1234)
    browser.find_element("id", "sample").click()
    wait_for(browser, f"document.getElementById('samples-grid').dataset.renders > {before}", "the seed-1234 grid")
    other = pixels(browser, "samples-grid")
    assert (other != first).mean() > 0.05
    set_value(browser, "seed", 7)
    browser.find_element("id", "sample").click()
    wait_for(browser, f"document.getElementById('samples-grid').dataset.renders > {before + 1}", "the seed-7 grid")
    np.testing.assert_array_equal(pixels(browser, "samples-grid"), first)

    # latent 8: a traversal, one slider per unit, decoding the picked sample's code as it moves
    wait_for(browser, "document.getElementById('traversal-image').dataset.renders !== '0'", "the traversal image")
    sliders = browser.find_elements("css selector", "#sliders input")
    assert len(sliders) == 8 and browser.find_element("id", "plane-card").get_attribute("hidden")
    start = pixels(browser, "traversal-image")
    done = renders(browser, "traversal-image")
    browser.execute_script("const s = arguments[0]; s.value = String(Number(s.max)); "
                           "s.dispatchEvent(new Event('input', {bubbles: true}));", sliders[0])
    wait_for(browser, f"document.getElementById('traversal-image').dataset.renders > {done}", "a moved slider's image")
    assert not np.array_equal(pixels(browser, "traversal-image"), start)
    wait_for(browser, "document.getElementById('interp-strip').dataset.renders !== '0'", "the interpolation strip")
    assert pixels(browser, "interp-strip").shape == (28, 10 * 28)
    assert console_errors(browser) == [] and message(browser) == ""
    screenshot(browser, docs_dir / "explorer-traversal.png")


def test_a_click_on_the_2d_plane_decodes_that_point_among_the_held_out_codes(browser, explorer_server, docs_dir):
    open_page(browser, explorer_server, f"#model={PLANE_MODEL}")
    wait_for(browser, "document.getElementById('plane-status').textContent.includes('encoded')", "the codes")
    status = browser.find_element("id", "plane-status").text
    assert status.startswith("207 held-out digits (the validation split of a model of digits 1,8)"), status
    assert [e.text for e in browser.find_elements("css selector", "#plane-legend span")][:2] == ["digit 1", "digit 8"]
    grid = pixels(browser, "plane-grid")
    assert grid.shape == (15 * 28, 15 * 28) and grid.std() > 10  # 225 decodings, not a blank square

    from selenium.webdriver.common.action_chains import ActionChains

    codes = browser.find_element("id", "plane-codes")
    ActionChains(browser).move_to_element_with_offset(codes, codes.size["width"] // 4, -codes.size["height"] // 5
                                                      ).click().perform()
    wait_for(browser, "document.getElementById('plane-decoded').dataset.renders !== '0'", "the clicked point's image")
    z = json.loads(browser.find_element("id", "plane-decoded").get_attribute("data-z"))
    assert 1.3 < z[0] < 1.7 and 1.0 < z[1] < 1.4  # a quarter of the width right, a fifth up: (1.5, 1.2)
    api = infer(explorer_server, f"{PLANE_MODEL}.decoder",
                [{"name": "LATENTS", "datatype": "FP32", "shape": [1, 2], "data": z}], ["IMAGES"])["IMAGES"]
    np.testing.assert_array_equal(pixels(browser, "plane-decoded"), api[0, 0])
    assert "decoded by" in browser.find_element("id", "plane-point").text
    draw_a_one(browser)
    wait_for(browser, "document.getElementById('draw-recon').dataset.renders !== '0'", "the drawing's reconstruction")
    assert console_errors(browser) == [] and message(browser) == ""
    screenshot(browser, docs_dir / "explorer.png")


def draw_a_one(browser) -> None:
    """A stroke from top to bottom of the drawing canvas, as a mouse would make it."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = browser.find_element("id", "draw-canvas")
    chain = ActionChains(browser).move_to_element_with_offset(canvas, 10, -100).click_and_hold()
    for step in range(1, 11):
        chain.move_by_offset(-2, 20)
    chain.release().perform()


def test_a_drawn_digit_round_trips_through_the_encoder_and_decoder(browser, explorer_server):
    open_page(browser, explorer_server, "#model=digits-vae")
    draw_a_one(browser)
    wait_for(browser, "document.getElementById('draw-recon').dataset.renders !== '0'", "the drawing's reconstruction")
    seen = pixels(browser, "draw-input")
    assert seen.shape == (28, 28) and seen.max() > 200 and seen[:4].max() == 0  # a centred stroke, MNIST-like
    code = json.loads(browser.find_element("id", "draw-code").get_attribute("data-z"))
    encoded = infer(explorer_server, "digits-vae.encoder", [{"name": "IMAGES", "datatype": "UINT8",
                                                             "shape": [1, 1, 28, 28], "data": seen.ravel().tolist()}],
                    ["LATENTS"])["LATENTS"]
    np.testing.assert_array_equal(np.float32(code), encoded[0].astype(np.float32))
    decoded = infer(explorer_server, "digits-vae.decoder", [{"name": "LATENTS", "datatype": "FP32",
                                                             "shape": [1, 8], "data": code}], ["IMAGES"])["IMAGES"]
    np.testing.assert_array_equal(pixels(browser, "draw-recon"), decoded[0, 0])
    # the drawing as one end of the interpolation
    done = renders(browser, "interp-strip")
    browser.find_element("id", "draw-to-a").click()
    wait_for(browser, f"document.getElementById('interp-strip').dataset.renders > {done}", "the interpolation")
    assert "from your drawing to seed 8" in browser.find_element("id", "interp-ends").text
    assert console_errors(browser) == [] and message(browser) == ""


def test_every_section_of_an_ae_renders_without_errors(browser, explorer_server):
    open_page(browser, explorer_server, "#model=digits-ae")
    wait_for(browser, "document.getElementById('interp-strip').dataset.renders !== '0'", "the interpolation strip")
    assert "AE · latent 8" in browser.find_element("id", "model-info").text
    assert console_errors(browser) == [] and message(browser) == ""
