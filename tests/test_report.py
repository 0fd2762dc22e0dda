"""report.html: rendered from a small results file, opened in headless Chromium; tables and plots must show."""
import re
import shutil

import numpy as np
import pytest

from slimzoo.storage import write_json


def _row(rid, strategy, value, delta, size, t1, base=None, task="classification", metric="top1", model="mobilenet_v1"):
    return {"id": rid, "task": task, "model": model, "dataset": "synth", "strategy": strategy, "base": base,
            "metric": {"name": metric, "value": value, "delta": delta}, "size_mb": size,
            "latency_ms": {"1": t1, "2": t1 * 0.6, "4": t1 * 0.5}, "flops": 5.8e8, "params": 3.2e6,
            "input_size": [224, 224], "eval_size": [64, 64], "label": None, "pruning": None}


@pytest.fixture
def small_zoo(tmp_path):
    rows = [_row("cls-mobilenet_v1-none", "none", 85.7, 0.0, 12.8, 5.1),
            _row("cls-mobilenet_v1-quant", "quant", 85.4, -0.3, 3.4, 2.1, base="cls-mobilenet_v1-none"),
            _row("cls-mobilenet_v1-prune50", "prune", 85.0, -0.7, 3.6, 2.6, base="cls-mobilenet_v1-none"),
            _row("seg-fast_scnn-none", "none", 69.9, 0.0, 4.6, 35.0, task="segmentation", metric="miou",
                 model="fast_scnn")]
    rows[2]["label"] = "prune -50%"
    write_json(tmp_path / "models" / "cls-mobilenet_v1-none" / "sensitivity-x.json", {
        "model": "MobileNetV1", "metric": "top1", "base_metric": 85.6, "evaluations": 7, "reference_evaluations": 126,
        "config": {"stop_loss": 0.2},
        "layers": {"features.1.pw.0": {"channels": 64, "points": [{"ratio": 0.25, "loss": 0.01},
                                                                   {"ratio": 0.5, "loss": 0.05}]},
                   "features.2.pw.0": {"channels": 128, "points": [{"ratio": 0.25, "loss": 0.0},
                                                                    {"ratio": 0.5, "loss": 0.02},
                                                                    {"ratio": 0.75, "loss": 0.3}]}}})
    write_json(tmp_path / "rows" / "cls-mobilenet_v1-quant" / "quant_layers.json", {
        "row": "cls-mobilenet_v1-quant", "model": "mobilenet_v1", "images": 32, "layers": [
            {"name": f"Conv_{i}", "module": f"features.{i}.pw.0", "op": "Conv", "sqnr_db": 20.0 + 3 * i,
             "metric_delta": None} for i in range(6)]})
    write_json(tmp_path / "results.json", {"meta": {"profile": "smoke", "wall_seconds": 12.0,
                                                    "machine": {"cpu": "Test CPU", "cores": 2, "date": "2026-11-28",
                                                                "torch": "2.14.1", "onnxruntime": "1.32.0"}},
                                           "rows": rows})
    return tmp_path


def test_report_is_self_contained_and_complete(small_zoo):
    from slimzoo.report import write_report

    page = write_report(small_zoo).read_text()
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)  # nothing fetched from the network
    assert page.count('<table class="zoo"') == 2  # one table per task
    assert page.count('<img class="plot"') == 4  # 2 trade-off pairs, 1 sensitivity, 1 per-layer INT8 error
    assert "Test CPU" in page and "70.18 (-0.81)" in page  # environment; the reference's figures beside ours
    assert "0.27x" in page  # our size ratio, INT8 vs FP32 (3.4 / 12.8)


def _chromium():
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(not (_chromium() and shutil.which("chromedriver")),
                    reason="chromium and chromium-driver not installed (`make test` installs them)")
def test_report_renders_in_headless_chromium(small_zoo):
    from PIL import Image
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    from slimzoo.report import write_report

    page = write_report(small_zoo)
    opts = webdriver.ChromeOptions()
    opts.binary_location = _chromium()
    for a in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
              "--window-size=1400,1000"):
        opts.add_argument(a)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        tables = driver.find_elements(By.CSS_SELECTOR, "table.zoo")
        assert len(tables) == 2 and all(t.is_displayed() and t.size["width"] > 600 for t in tables)
        assert [len(t.find_elements(By.CSS_SELECTOR, "tbody tr")) for t in tables] == [3, 1]
        assert all(r.size["height"] > 10 for t in tables for r in t.find_elements(By.CSS_SELECTOR, "tr"))
        assert "mobilenet_v1" in tables[0].text and "fast_scnn" in tables[1].text
        imgs = driver.find_elements(By.CSS_SELECTOR, "img.plot")
        assert len(imgs) == 4
        for img in imgs:
            driver.execute_script("arguments[0].scrollIntoView()", img)
            assert img.is_displayed() and img.size["width"] > 200 and img.size["height"] > 100
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 200
        driver.execute_script("window.scrollTo(0, 0)")
        shot = small_zoo / "report.png"
        driver.save_screenshot(str(shot))
    finally:
        driver.quit()
    px = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert px.shape[1] >= 1000 and (px < 128).mean() > 0.01 and px.std() > 20  # text and table lines drawn
