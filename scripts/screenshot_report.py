"""A screenshot of a run's report.html for the README (``docs/report.png``), in Debian's headless Chromium.

Runs the bundled default on 32 digits with a few metrics into a temporary folder (nothing is published), opens its
report and captures the whole page.

    .venv/bin/python scripts/screenshot_report.py [--out docs]
"""
import argparse
import sys
import tempfile
from pathlib import Path

from chromium import INSTALL, available, browser

REPO = Path(__file__).resolve().parents[1]
RUN = ["method=lrp", "composite=epsilon_gamma_box", "dataset.limit=32", "heatmaps=6",
       "evaluation.metrics=[srg,road,max_sensitivity]", "+evaluation.params.max_sensitivity.nr_samples=5",
       "tracking.publish=false"]
WIDTH = 1100


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(REPO / "docs"), help="folder for report.png (default docs/)")
    args = parser.parse_args()
    if not available():
        parser.error(f"Chromium or its driver is missing: {INSTALL}")
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR
    from pipeline.job import run_job

    with tempfile.TemporaryDirectory(prefix="report-") as workdir:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=RUN)
        folder = run_job(cfg, Path(workdir) / "run")
        driver = browser(Path(workdir) / "profile", (WIDTH, 1000))
        try:
            driver.get((folder.results / "report.html").as_uri())
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(WIDTH, min(height + 100, 4000))
            out = Path(args.out) / "report.png"
            driver.save_screenshot(str(out))
        finally:
            driver.quit()
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
