"""``report.html``: one self-contained page per run and per comparison, opened from the MLflow UI's artifact view.

A run's page: the config, the accuracy, every metric with its direction, the heatmap gallery and the pixel-flipping
curves. A comparison's (a sweep parent's): the ranking across methods and its figures. Images are inlined as data
URIs; there is no script and nothing is fetched from the network, so the page opens anywhere, offline.
"""
import base64
import html
import math
from pathlib import Path

import pandas as pd

from pipeline.stages.metrics import higher_is_better

STYLE = """body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { display: inline-block; margin: 0 1em 1em 0; } img { max-width: 100%; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }"""


def render_report(title: str, config_yaml: str, metrics: dict[str, float], images: dict[str, Path]) -> str:
    """A run's page: ``metrics`` (MLflow keys -> values), ``images`` (caption -> PNG file, missing ones left out)."""
    rows = [[html.escape(key), float(value), direction(key)] for key, value in sorted(metrics.items())]
    accuracy = metrics.get("model/accuracy")
    headline = f"accuracy {accuracy:.1%} on {int(metrics.get('data/samples', 0))} samples" if accuracy is not None else ""
    figures = {caption: path.read_bytes() for caption, path in images.items() if path.exists()}
    return page(title, [f"<p>{html.escape(headline)}</p>",
                        "<h2>Metrics</h2>", table_html(["metric", "value", "better"], rows),
                        "<h2>Heatmaps and curves</h2>", figures_html(figures),
                        "<h2>Config</h2>", f"<pre>{html.escape(config_yaml)}</pre>"])


def render_comparison(title: str, ranking: pd.DataFrame, figures: dict[str, bytes]) -> str:
    """A comparison's page: ``ranking`` (best first) and ``figures`` (caption -> PNG bytes)."""
    rows = [[v if isinstance(v, float) else html.escape(str(v)) for v in row] for row in ranking.itertuples(index=False)]
    header = [html.escape(str(c)) + (f" ({direction(str(c))} is better)" if direction(str(c)) else "")
              for c in ranking.columns]
    return page(title, ["<h2>Ranking</h2>", table_html(header, rows), figures_html(figures)])


def page(title: str, parts: list[str]) -> str:
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
            f"<style>\n{STYLE}\n</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


def table_html(header: list[str], rows: list[list[str | float]]) -> str:
    """Text cells are HTML already (escaped by the caller); floats are formatted and right-aligned."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "\n".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>\n{body}\n</table>"


def _cell(value: str | float) -> str:
    if isinstance(value, float):
        return f"<td class=num>{'—' if math.isnan(value) else f'{value:.4g}'}</td>"
    return f"<td>{value}</td>"


def figures_html(figures: dict[str, bytes]) -> str:
    return "\n".join(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
                     f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(caption)}</figcaption></figure>'
                     for caption, png in figures.items())


def direction(key: str) -> str:
    """"higher" / "lower" for a metric key with a direction, "" for anything else (counts, times, names)."""
    try:
        return "higher" if higher_is_better(key) else "lower"
    except ValueError:
        return ""
