"""Turn finished batch results into the run's results: per-sample table, metrics, mean curves, figures.

Everything lands in ``<output_dir>/results/``; publishing only reads these files.
"""
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from pipeline.stages.evaluate import COMPLEXITY_METRICS, METRICS
from pipeline.stages.html_report import render_report
from pipeline.stages.metrics import ALWAYS, SPECS, metric_key
from pipeline.stages.results import RunFolder, atomic_write, write_json

PER_SAMPLE_COLUMNS = ("sample_id", "label", "prediction", "target", *METRICS, *COMPLEXITY_METRICS)


def summarize(folder: RunFolder, classes: list[str] | None = None, extra: dict[str, float] | None = None) -> dict[str, float]:
    """Write ``results/`` from the batch files and return the run's metrics (fixed keys, plus ``extra``)."""
    arrays = folder.read_batches()
    if not len(arrays["sample_id"]):  # every selected image unreadable: an error, not a complete run of nothing
        raise ValueError(f"no readable images: all {len(arrays['skipped_ids'])} selected image(s) of dataset.path="
                         f"{folder.manifest['dataset']['source']} were skipped as unreadable (see the warnings above "
                         "for each file and why); fix or replace them")
    out = folder.results
    out.mkdir(parents=True, exist_ok=True)

    extra_metrics = [n for n in SPECS if n not in ALWAYS and n in arrays]  # evaluation.metrics of the run
    table = pd.DataFrame({c: arrays[c] for c in (*PER_SAMPLE_COLUMNS, *extra_metrics)})
    atomic_write(out / "per_sample.csv", lambda f: f.write(table.to_csv(index=False).encode()))
    skipped = pd.DataFrame({"sample_id": arrays["skipped_ids"], "path": arrays["skipped_paths"]})
    atomic_write(out / "skipped.csv", lambda f: f.write(skipped.to_csv(index=False).encode()))

    metrics = {f"faithfulness/{m}": float(np.mean(arrays[m])) for m in METRICS}
    metrics |= {f"complexity/{m}": float(np.mean(arrays[m])) for m in COMPLEXITY_METRICS}
    metrics |= {metric_key(m): _mean_of_defined(arrays[m]) for m in extra_metrics}
    metrics |= {
        "model/accuracy": float(np.mean(arrays["prediction"] == arrays["label"])),
        "data/samples": float(len(table)),
        "data/skipped_images": float(len(skipped)),
        "runtime/explain_seconds": float(arrays["explain_seconds"].sum()),
        "runtime/evaluate_seconds": float(arrays["evaluate_seconds"].sum()),
        **(extra or {}),
    }
    curves = {order: arrays[f"curve_{order}"].mean(axis=0).tolist() for order in ("morf", "lerf")}
    write_json(out / "metrics.json", metrics)
    write_json(out / "curves.json", curves)

    ids, attribution, x = arrays["heatmap_ids"], arrays["heatmap_attribution"], arrays["heatmap_x"]
    titles = [_title(arrays, i, classes) for i in ids]
    if len(ids):
        from xai.heatmap import heatmap, heatmap_grid, input_images

        heatmaps = heatmap(torch.from_numpy(attribution))
        for sample_id, image in zip(ids, heatmaps):
            path = out / "heatmaps" / f"{heatmap_key(int(sample_id)).split('/')[-1]}.png"
            atomic_write(path, lambda f, im=image: im.save(f, format="PNG"))
        gallery = heatmap_grid({"input": input_images(torch.from_numpy(x)), folder.manifest["run_name"]: heatmaps},
                               column_labels=titles)
        atomic_write(out / "gallery.png", lambda f: gallery.save(f, format="PNG"))
    _save_curves(out / "curves.png", curves)
    page = render_report(folder.manifest["run_name"], folder.config_file.read_text(), metrics,
                         {"heatmaps": out / "gallery.png", "pixel-flipping curves": out / "curves.png"})
    atomic_write(out / "report.html", lambda f: f.write(page.encode()))
    return metrics


def _mean_of_defined(scores: np.ndarray) -> float:
    """The mean over samples with a score (NaN: undefined for that sample, e.g. an empty ground-truth mask)."""
    defined = scores[~np.isnan(scores)]
    return float(defined.mean()) if defined.size else float("nan")


def heatmap_key(sample_id: int) -> str:
    """The image key of a sample's heatmap: the same in every run, so MLflow's image grid lines runs up."""
    return f"heatmap/sample_{sample_id:05d}"


def _title(arrays: dict[str, np.ndarray], sample_id: int, classes: list[str] | None) -> str:
    row = int(np.flatnonzero(arrays["sample_id"] == sample_id)[0])
    name = (lambda c: classes[c] if classes and 0 <= c < len(classes) else str(c))
    return f"#{sample_id} y={name(int(arrays['label'][row]))} p={name(int(arrays['prediction'][row]))}"


def _save_curves(path: Path, curves: dict[str, list[float]]) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.5, 3.2))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for order, label in (("morf", "MoRF (most relevant first)"), ("lerf", "LeRF (least relevant first)")):
        curve = np.asarray(curves[order])
        ax.plot(np.linspace(0, 1, len(curve)), curve, label=label)
    ax.set_xlabel("fraction of pixels flipped")
    ax.set_ylabel("mean score of the explained class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
