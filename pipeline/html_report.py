"""``results/report.html``: one self-contained page per run that people open from the MLflow UI's artifact view.

The config, the accuracy, every metric with its direction, the heatmap gallery and the pixel-flipping curves, the
images inlined as data URIs; no script and nothing fetched from the network, so it opens anywhere, offline.
"""
import base64
import html
import math
from pathlib import Path

from pipeline.metrics import higher_is_better


def render_report(title: str, config_yaml: str, metrics: dict[str, float], images: dict[str, Path]) -> str:
    """The page: ``metrics`` (MLflow keys -> values), ``images`` (caption -> PNG file, missing ones left out)."""
    rows = []
    for key, value in sorted(metrics.items()):
        direction = _direction(key)
        shown = "—" if isinstance(value, float) and math.isnan(value) else f"{value:.4g}"
        rows.append(f"<tr><td>{html.escape(key)}</td><td class=num>{shown}</td><td>{direction}</td></tr>")
    figures = [f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,'
               f'{base64.b64encode(path.read_bytes()).decode()}"><figcaption>{html.escape(caption)}</figcaption>'
               "</figure>" for caption, path in images.items() if path.exists()]
    accuracy = metrics.get("model/accuracy")
    headline = f"accuracy {accuracy:.1%} on {int(metrics.get('data/samples', 0))} samples" if accuracy is not None else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }} td, th {{ padding: .2em .8em; border-bottom: 1px solid #ddd; text-align: left; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
figure {{ display: inline-block; margin: 0 1em 1em 0; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>{html.escape(headline)}</p>
<h2>Metrics</h2>
<table><tr><th>metric</th><th>value</th><th>better</th></tr>
{chr(10).join(rows)}
</table>
<h2>Heatmaps and curves</h2>
{chr(10).join(figures)}
<h2>Config</h2>
<pre>{html.escape(config_yaml)}</pre>
</body></html>
"""


def _direction(key: str) -> str:
    """"higher" / "lower" for the metrics with a direction, "" for counts and times."""
    try:
        return "higher" if higher_is_better(key) else "lower"
    except ValueError:
        return ""
