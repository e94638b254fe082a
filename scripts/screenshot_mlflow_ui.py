"""Screenshots of the MLflow UI comparing explanation methods, for the README.

Starts ``mlflow server`` (SQLite backend, served artifacts) on a free port in a temporary folder, runs a
small sweep into it (three methods on 16 digits: one parent run, three children), then drives Debian's
headless Chromium through ``/usr/bin/chromedriver`` (selenium, the ``dev`` extra) and saves:

* ``docs/mlflow_compare.png``: the experiment's chart view of the sweep's runs: the mean MoRF/LeRF curves
  (step metrics ``curve/morf``, ``curve/lerf``) and the faithfulness metrics side by side;
* ``docs/mlflow_heatmaps.png``: an "Image grid" chart added to that view, full screen: the runs' heatmaps
  side by side (the same ``heatmap/sample_<id>`` keys in every run line them up).

    .venv/bin/pip install -e '.[dev]'
    .venv/bin/python scripts/screenshot_mlflow_ui.py [--out docs] [--keep]
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from chromium import INSTALL, available, browser

REPO = Path(__file__).resolve().parents[1]
EXPERIMENT = "compare-methods"
EXPLAINERS = "gradient-none,integrated_gradients-none,lrp-epsilon_gamma_box"
WINDOW = (1600, 1250)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(workdir: Path, port: int) -> subprocess.Popen:
    """``mlflow server`` on 127.0.0.1:<port>; returns once ``/health`` answers."""
    command = [str(Path(sys.executable).with_name("mlflow")), "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{workdir / 'mlflow.db'}",
               "--artifacts-destination", str(workdir / "artifacts")]
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen(command, cwd=workdir, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 180
    while time.time() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({server.returncode}); see {workdir / 'server.log'}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        except OSError:
            time.sleep(1)
    server.terminate()
    raise TimeoutError(f"mlflow server did not answer on port {port} within 180 s")


def run_sweep(workdir: Path, uri: str) -> None:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    command = [sys.executable, "-m", "pipeline.run", "-m", f"explainer={EXPLAINERS}", "dataset.limit=16",
               "heatmaps=4", f"tracking.uri={uri}", f"tracking.experiment={EXPERIMENT}",
               f"output_root={workdir / 'outputs'}"]
    subprocess.run(command, cwd=REPO, env=env, check=True)


def experiment_id(uri: str) -> str:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri).get_experiment_by_name(EXPERIMENT).experiment_id


def wait_for(driver, css: str, timeout: float = 60.0):
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(expected_conditions.element_to_be_clickable(("css selector", css)))


def close_assistant(driver) -> None:
    """The UI opens its "MLflow Assistant" side panel on first visit; it would cover a third of the page."""
    for button in driver.find_elements("css selector", 'button[aria-label="Close"]'):
        button.click()


def click(driver, element) -> None:
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'});", element)
    time.sleep(1)
    element.click()


def open_chart_view(driver, base: str, experiment_id: str) -> None:
    """The experiment's chart view with the sweep's children visible (only visible runs are charted)."""
    driver.get(f"{base}/#/experiments/{experiment_id}/runs?compareRunsMode=CHART")
    expand = wait_for(driver, 'button[data-component-id*="runnamecellrenderer"]')  # the sweep parent's "+"
    close_assistant(driver)
    expand.click()
    time.sleep(8)


def screenshot_curves(driver, out: Path) -> None:
    """Curves first, then the faithfulness metrics: the ``data`` section in between is folded away."""
    hide_parent = driver.find_element("xpath", "(//label[.//span[normalize-space(text())='Hide run']])[1]")
    hide_parent.click()  # the first row is the sweep parent: it has no curves, only a legend entry
    fold = driver.find_element("xpath", "//*[normalize-space(text())='data']/ancestor::*[@role='button'][1]")
    click(driver, fold)
    driver.execute_script("window.scrollTo(0, 0);")
    time.sleep(3)
    driver.save_screenshot(str(out / "mlflow_compare.png"))


def screenshot_image_grid(driver, out: Path) -> None:
    """Add an "Image grid" chart of every heatmap key (runs as columns, samples as rows) and show it full screen."""
    add = driver.find_element("xpath", "//*[normalize-space(text())='heatmap']/following::button[normalize-space(.)='Add chart'][1]")
    click(driver, add)
    wait_for(driver, '[data-testid="experiment-view-compare-runs-chart-type-image"]').click()
    wait_for(driver, 'button[aria-label^="Images"]').click()
    time.sleep(2)
    for option in driver.find_elements("xpath", "//*[@role='option']"):
        option.click()
        time.sleep(0.3)
    from selenium.webdriver.common.keys import Keys

    driver.find_element("tag name", "body").send_keys(Keys.ESCAPE)  # close the key list
    show_params = driver.find_element("xpath", "//*[@role='dialog']//button[@role='switch']")
    if show_params.get_attribute("aria-checked") == "true":  # the run's ~40 params would push the images away
        show_params.click()
    driver.find_element("css selector", '[data-testid="experiment-view-compare-runs-chart-modal-confirm"]').click()
    time.sleep(5)
    grid = driver.find_element("xpath", "//h4[normalize-space(text())='Image grid']")
    full_screen = grid.find_element("xpath", "./ancestor::*[.//button][1]//button")
    driver.set_window_size(1280, 1400)  # narrower columns: smaller images, more samples on screen
    driver.execute_script("arguments[0].click();", full_screen)
    time.sleep(8)  # images load lazily once visible
    driver.save_screenshot(str(out / "mlflow_heatmaps.png"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for the PNGs (default docs/)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary server folder")
    args = parser.parse_args()
    if not available():
        parser.error(f"Chromium or its driver is missing: {INSTALL}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix="mlflow-ui-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    server = start_server(workdir, port)
    try:
        run_sweep(workdir, base)
        driver = browser(workdir / "chromium-profile", WINDOW)
        try:
            open_chart_view(driver, base, experiment_id(base))
            screenshot_curves(driver, out)
            screenshot_image_grid(driver, out)
        finally:
            driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"wrote {out / 'mlflow_compare.png'} and {out / 'mlflow_heatmaps.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
