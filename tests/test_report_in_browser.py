"""A run's report.html in a real browser (Debian's headless Chromium): every inlined image decodes, nothing is
fetched, and the metrics table shows every metric of the run. Skipped where Chromium is not installed (CI installs
it: .ci/run)."""
import json
import sys
from pathlib import Path

import pytest

from pipeline.job import run_job

from conftest import compose_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from chromium import INSTALL, available, browser  # noqa: E402

pytestmark = pytest.mark.skipif(not available(), reason=f"no Chromium: {INSTALL}")


def test_the_report_of_a_run_renders_whole_in_chromium_without_the_network(tmp_path):
    folder = run_job(compose_config(["method=lrp", "dataset.limit=4", "heatmaps=4", "evaluation.steps=4",
                                     "tracking.publish=false"]), tmp_path / "out")
    metrics = json.loads((folder.results / "metrics.json").read_text())
    driver = browser(tmp_path / "profile", (1200, 900))
    try:
        driver.get((folder.results / "report.html").as_uri())
        images = driver.execute_script(
            "return [...document.images].map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
        fetched = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        rows = driver.execute_script("return [...document.querySelectorAll('table tr td:first-child')]"
                                     ".map(td => td.textContent)")
        title = driver.title
        screenshot = driver.get_screenshot_as_png()
    finally:
        driver.quit()
    assert [alt for alt, *_ in images] == ["heatmaps", "pixel-flipping curves"]
    assert all(complete and width > 100 and height > 100 for _, complete, width, height in images), images
    assert fetched == []  # images are data URIs; no style sheet, font or script comes from anywhere
    assert sorted(rows) == sorted(metrics)
    assert title.startswith("lrp-epsilon_gamma_box")
    assert len(screenshot) > 10_000
