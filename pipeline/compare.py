"""``python -m pipeline.compare --experiment X``: rank runs by SRG (or by any metric, or by their mean rank over all
metrics: ``--by``), print the table, optionally log it with plots.

Runs are read with ``mlflow.search_runs``; only runs with a ``faithfulness/srg`` metric take part (sweep
parents and comparison runs have none). With ``--log`` the ranking (JSON table and CSV), a figure of
the compared runs' mean MoRF/LeRF curves and, when the runs share more metrics than SRG, the ranking across all
their metrics (``evaluation.rank_methods``: each metric ranked in its own direction, ordered by mean rank) with a
figure of the ranks go into the sweep's parent run (``--parent``) or into a new run named ``comparison``.
"""
import argparse
import io
import sys
from typing import Optional

import numpy as np
import pandas as pd

from pipeline.stages.html_report import render_comparison
from pipeline.tracking.store import resolve_tracking_uri

#: Table column -> ``mlflow.search_runs`` column.
COLUMNS = {
    "run": "tags.mlflow.runName",
    "method": "tags.method",
    "composite": "tags.composite",
    "model": "tags.model",
    "dataset": "tags.dataset",
    "srg": "metrics.faithfulness/srg",
    "auc_morf": "metrics.faithfulness/auc_morf",
    "auc_lerf": "metrics.faithfulness/auc_lerf",
    "aopc_morf": "metrics.faithfulness/aopc_morf",
    "samples": "metrics.data/samples",
    "run_id": "run_id",
    "output_dir": "tags.output_dir",
}
COMPARISON_TAG = "comparison"
ARTIFACT_DIR = "comparison"
#: Metric key prefixes that score attributions (``pipeline.stages.metrics``); their columns join the table by full key.
METRIC_GROUPS = ("faithfulness", "randomisation", "robustness", "complexity", "localisation")
#: Parts of SRG (it is AUC(LeRF) - AUC(MoRF)): left out of the cross-metric ranking, which would count SRG 4 times.
SRG_PARTS = ("faithfulness/auc_morf", "faithfulness/auc_lerf", "faithfulness/aopc_morf")
MEAN_RANK = "mean_rank"


def search_runs(uri: str, **kwargs) -> pd.DataFrame:
    """``mlflow.search_runs`` against ``uri``, leaving the process's tracking URI (and its environment) as it was."""
    import mlflow

    from pipeline.tracking.store import fluent_uri

    with fluent_uri(uri):
        return mlflow.search_runs(**kwargs)


def find_runs(uri: str, experiment: str, parent: Optional[str] = None, filter_string: str = "",
              by: str = "srg") -> pd.DataFrame:
    """Finished runs of ``experiment`` (children of ``parent`` when given) that have an SRG, best first by ``by``
    (a column, a metric key such as ``localisation/pointing_game``, or ``mean_rank`` over all metrics)."""
    from pipeline.tracking.store import tracking_client

    if tracking_client(uri).get_experiment_by_name(experiment) is None:
        raise ValueError(f"no experiment named {experiment!r} at {uri}: check --experiment and --tracking-uri")
    clauses = ["attributes.status = 'FINISHED'"]
    if parent:
        clauses.append(f"tags.mlflow.parentRunId = '{parent}'")
    if filter_string:
        clauses.append(filter_string)
    runs = search_runs(uri, experiment_names=[experiment], filter_string=" and ".join(clauses))
    if runs.empty or COLUMNS["srg"] not in runs:
        return pd.DataFrame(columns=[c for c in COLUMNS if c != "output_dir"])
    runs = runs[runs[COLUMNS["srg"]].notna()]
    table = pd.DataFrame({name: runs.get(column, pd.Series(np.nan, index=runs.index)) for name, column in COLUMNS.items()})
    logged = {c.removeprefix("metrics.") for c in runs.columns if c.startswith("metrics.")}
    for key in sorted(k for k in logged if k.split("/")[0] in METRIC_GROUPS and f"metrics.{k}" not in COLUMNS.values()):
        table[key] = runs[f"metrics.{key}"]
    # A sweep that reuses a finished folder logs it again under its own parent: list those results once (newest run;
    # search_runs returns newest first).
    reused = table["output_dir"].notna() & table.duplicated("output_dir", keep="first")
    table = table[~reused].drop(columns="output_dir").reset_index(drop=True)
    return order_by(table, by)


def ranked_metrics(table: pd.DataFrame) -> list[str]:
    """The metric keys the cross-metric ranking uses: SRG and every other metric some run has (not SRG's parts)."""
    keys = [k for k in table.columns if "/" in k and k not in SRG_PARTS and table[k].notna().any()]
    return ["faithfulness/srg", *keys]


def metric_ranking(table: pd.DataFrame) -> pd.DataFrame:
    """``evaluation.rank_methods`` over the runs (index: run id) and ``ranked_metrics``, best mean rank first."""
    from evaluation import rank_methods
    from pipeline.stages.metrics import higher_is_better

    keys = ranked_metrics(table)
    values = table.rename(columns={"srg": "faithfulness/srg"}).set_index("run_id")[keys]
    scores = {run_id: {k: v for k, v in row.items() if pd.notna(v)} for run_id, row in values.iterrows()}
    return rank_methods(scores, directions={k: higher_is_better(k) for k in keys})


def order_by(table: pd.DataFrame, by: str) -> pd.DataFrame:
    """The table best first by ``by``: ``mean_rank`` (across all metrics), a column or a metric key, each in its
    metric's direction."""
    if table.empty:
        return table
    if by == MEAN_RANK:
        order = metric_ranking(table).index
        return table.set_index("run_id").loc[order].reset_index()[table.columns]
    from pipeline.stages.metrics import higher_is_better

    column = {"faithfulness/srg": "srg", **{v.removeprefix("metrics."): k for k, v in COLUMNS.items()}}.get(by, by)
    metric_columns = [c for c in table.columns if c in ("srg", "auc_morf", "auc_lerf", "aopc_morf") or "/" in c]
    if column not in metric_columns:
        raise ValueError(f"--by {by}: no such metric in these runs; choose {MEAN_RANK} or one of "
                         f"{', '.join(metric_columns)}")
    key = f"faithfulness/{column}" if "/" not in column else column
    return table.sort_values(column, ascending=not higher_is_better(key), kind="stable",
                             na_position="last").reset_index(drop=True)


def format_table(table: pd.DataFrame) -> str:
    """The ranking as aligned text, rank 1 = best."""
    shown = table.copy()
    shown["run_id"] = shown["run_id"].str[:8]  # enough to tell runs apart; the full id is in --log's CSV
    shown.index = pd.RangeIndex(1, len(shown) + 1, name="rank")
    shown["samples"] = shown["samples"].astype("Int64")
    return shown.to_string(float_format=lambda v: f"{v:.4f}")


def curves(client, run_id: str) -> dict[str, np.ndarray]:
    """The run's mean MoRF and LeRF curves (step metrics ``curve/morf``, ``curve/lerf``), in step order."""
    out = {}
    for order in ("morf", "lerf"):
        history = sorted(client.get_metric_history(run_id, f"curve/{order}"), key=lambda m: m.step)
        out[order] = np.array([m.value for m in history])
    return out


def curve_figure(client, table: pd.DataFrame):
    """MoRF and LeRF curves of each compared run side by side (x = fraction of pixels flipped)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for row in table.itertuples():
        run_curves = curves(client, row.run_id)
        for ax, order in zip(axes, ("morf", "lerf")):
            curve = run_curves[order]
            if len(curve):
                ax.plot(np.linspace(0, 1, len(curve)), curve, label=f"{row.run} (SRG {row.srg:.3f})")
    for ax, title in zip(axes, ("MoRF: most relevant first (lower is better)", "LeRF: least relevant first (higher is better)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("fraction of pixels flipped")
    axes[0].set_ylabel("mean score of the explained class")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    return fig


def rank_figure(table: pd.DataFrame, ranking: pd.DataFrame):
    """Runs x metrics, coloured by rank (1 = best, green) and labelled with the score: where the metrics agree."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ranked_metrics(table)
    names = table.set_index("run_id")["run"]
    ranks = ranking[[f"{k} rank" for k in keys]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(max(5.5, 2.5 + 1.1 * len(keys)), 1.1 + 0.42 * len(ranking)))
    ax.imshow(ranks, cmap="RdYlGn_r", vmin=1, vmax=max(len(ranking), 2), aspect="auto")
    for i, run_id in enumerate(ranking.index):
        for j, key in enumerate(keys):
            score = ranking.loc[run_id, key]
            text = "n/a" if pd.isna(score) else f"{score:.3f}\n#{ranks[i, j]:g}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7)
    ax.set_xticks(range(len(keys)), [k.replace("/", "/\n") for k in keys], fontsize=7)
    ax.set_yticks(range(len(ranking)), [f"{names[r]} (mean rank {ranking.loc[r, 'mean rank']:.2f})"
                                        for r in ranking.index], fontsize=7)
    ax.set_title("rank per metric (1 = best, in its direction)", fontsize=9)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def log_comparison(client, run_id: str, table: pd.DataFrame) -> None:
    """Log the ranking (table + CSV + text), the curve figure and, with more metrics than SRG, the cross-metric
    ranking and its figure into ``run_id``, and all of it as one page, ``report.html``."""
    import matplotlib.pyplot as plt

    client.log_table(run_id, table.assign(rank=range(1, len(table) + 1)), f"{ARTIFACT_DIR}/ranking.json")
    client.log_text(run_id, table.to_csv(index=False), f"{ARTIFACT_DIR}/ranking.csv")
    client.log_text(run_id, format_table(table), f"{ARTIFACT_DIR}/ranking.txt")
    figures = {}
    fig = curve_figure(client, table)
    client.log_figure(run_id, fig, f"{ARTIFACT_DIR}/curves.png")
    figures["mean pixel-flipping curves"] = _png(fig)
    plt.close(fig)
    shown = table
    if len(ranked_metrics(table)) > 1:
        ranking = metric_ranking(table)
        named = ranking.rename_axis("run_id").join(table.set_index("run_id")["run"]).reset_index()
        shown = named[["run", *ranking.columns, "run_id"]]  # the run's name first, its id last
        client.log_table(run_id, shown, f"{ARTIFACT_DIR}/metric_ranking.json")
        client.log_text(run_id, shown.to_csv(index=False), f"{ARTIFACT_DIR}/metric_ranking.csv")
        fig = rank_figure(table, ranking)
        client.log_figure(run_id, fig, f"{ARTIFACT_DIR}/metric_ranks.png")
        figures = {"rank per metric": _png(fig), **figures}
        plt.close(fig)
    page = render_comparison(f"comparison of {len(table)} runs", shown.drop(columns="run_id"), figures)
    client.log_text(run_id, page, "report.html")
    best = table.iloc[0]
    client.set_tag(run_id, "best_run", f"{best['run']} ({best['run_id']})")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.compare", description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="xai-pipeline", help="experiment name (default: xai-pipeline)")
    parser.add_argument("--tracking-uri", help="default: MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--parent", help="only the children of this sweep parent run (and log into it with --log)")
    parser.add_argument("--filter", default="", help="extra search_runs filter, e.g. \"tags.model = 'digits_cnn'\"")
    parser.add_argument("--by", default="srg", help=f"rank by this metric (a column or key, e.g. "
                        f"localisation/pointing_game) or by {MEAN_RANK} across all metrics (default: srg)")
    parser.add_argument("--log", action="store_true", help="log the table and curve plot into MLflow")
    args = parser.parse_args(argv)

    uri = resolve_tracking_uri(args.tracking_uri)
    try:
        table = find_runs(uri, args.experiment, args.parent, args.filter, by=args.by)
    except ValueError as error:
        parser.error(str(error))
    if table.empty:
        print(f"no finished runs with faithfulness/srg in experiment {args.experiment!r} match", file=sys.stderr)
        return 1
    print(format_table(table))
    if args.log:
        from pipeline.tracking.store import get_or_create_experiment, tracking_client

        client = tracking_client(uri)
        run_id = args.parent
        if run_id is None:
            experiment_id = get_or_create_experiment(client, args.experiment)
            run_id = client.create_run(experiment_id, run_name="comparison", tags={COMPARISON_TAG: "true"}).info.run_id
        log_comparison(client, run_id, table)
        if args.parent is None:
            client.set_terminated(run_id, "FINISHED")
        print(f"logged the comparison into run {run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
