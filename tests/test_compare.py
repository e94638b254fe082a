"""``pipeline.compare`` on runs logged by the test with MLflow's client (values chosen by the test)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from mlflow.entities import Metric
from PIL import Image

from pipeline.compare import curves, find_runs, main


def log_run(client, eid, method, composite, srg, morf, lerf, parent=None, more_metrics=None, **more_tags):
    tags = {"method": method, "composite": composite, **({"mlflow.parentRunId": parent} if parent else {}), **more_tags}
    run_id = client.create_run(eid, run_name=f"{method}-{composite}", tags=tags).info.run_id
    metrics = {"faithfulness/srg": srg, "faithfulness/auc_morf": 0.5 - srg / 2, "faithfulness/auc_lerf": 0.5 + srg / 2,
               "faithfulness/aopc_morf": srg / 3, "data/samples": 8.0, **(more_metrics or {})}
    batch = [Metric(k, v, 0, 0) for k, v in metrics.items()]
    # curve points logged in reverse step order: the comparison must put them back in step order
    batch += [Metric("curve/morf", v, 0, s) for s, v in reversed(list(enumerate(morf)))]
    batch += [Metric("curve/lerf", v, 0, s) for s, v in reversed(list(enumerate(lerf)))]
    client.log_batch(run_id, metrics=batch)
    client.set_terminated(run_id)
    return run_id


def test_ranks_by_srg_prints_and_logs_table_and_curves(tracking, tmp_path, capsys):
    uri, client, eid, experiment = tracking
    parent = client.create_run(eid, run_name="sweep", tags={"sweep": "true"}).info.run_id
    low = log_run(client, eid, "gradient", "none", 0.10, [1.0, 0.6, 0.2], [1.0, 0.9, 0.8], parent)
    high = log_run(client, eid, "lrp", "epsilon_plus", 0.35, [1.0, 0.3, 0.1], [1.0, 0.95, 0.9], parent)
    log_run(client, eid, "smoothgrad", "none", 0.90, [1.0, 0.1, 0.0], [1.0, 1.0, 1.0])  # outside the sweep

    table = find_runs(uri, experiment, parent=parent)
    assert table["run_id"].tolist() == [high, low]
    assert table.loc[0, "composite"] == "epsilon_plus" and table.loc[0, "samples"] == 8
    assert table.loc[1, "auc_morf"] == pytest.approx(0.45)
    np.testing.assert_allclose(curves(client, high)["morf"], [1.0, 0.3, 0.1])

    assert main(["--tracking-uri", uri, "--experiment", experiment, "--parent", parent, "--log"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "srg" in lines[0] and "aopc_morf" in lines[0]
    assert "lrp-epsilon_plus" in lines[2] and "gradient-none" in lines[3]  # header, "rank", then best first

    logged = Path(client.download_artifacts(parent, "comparison", str(tmp_path)))
    ranking = json.loads((logged / "ranking.json").read_text())
    assert [row[ranking["columns"].index("run_id")] for row in ranking["data"]] == [high, low]
    with Image.open(logged / "curves.png") as plot:
        assert plot.size[0] > 500
    assert client.get_run(parent).data.tags["best_run"] == f"lrp-epsilon_plus ({high})"


def test_without_parent_compares_all_and_logs_a_comparison_run(tracking, capsys):
    uri, client, eid, experiment = tracking
    a = log_run(client, eid, "gradient", "none", 0.1, [1.0, 0.5], [1.0, 0.9])
    b = log_run(client, eid, "smoothgrad", "none", 0.2, [1.0, 0.4], [1.0, 0.95])
    assert main(["--tracking-uri", uri, "--experiment", experiment, "--log", "--filter", "tags.method != 'x'"]) == 0
    comparison = client.search_runs([eid], "tags.comparison = 'true'")
    assert len(comparison) == 1 and comparison[0].info.status == "FINISHED"
    assert find_runs(uri, experiment)["run_id"].tolist() == [b, a]  # the comparison run has no SRG: not ranked


def test_unknown_experiment_and_no_runs_are_clear(tracking, capsys):
    uri, _, _, experiment = tracking
    with pytest.raises(SystemExit):
        main(["--tracking-uri", uri, "--experiment", "nope"])
    assert "no experiment named 'nope'" in capsys.readouterr().err
    assert main(["--tracking-uri", uri, "--experiment", experiment]) == 1
    assert "no finished runs" in capsys.readouterr().err


def test_searching_leaves_the_process_tracking_uri_alone(tracking, monkeypatch):
    import mlflow

    uri, client, eid, experiment = tracking
    log_run(client, eid, "gradient", "none", 0.1, [1.0, 0.5], [1.0, 0.9])
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///somewhere-else.db")
    assert len(find_runs(uri, experiment)) == 1
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///somewhere-else.db"  # subprocesses inherit this
    assert mlflow.get_tracking_uri() == "sqlite:///somewhere-else.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    find_runs(uri, experiment)
    assert "MLFLOW_TRACKING_URI" not in os.environ


def test_runs_of_different_models_are_told_apart_and_a_reused_folder_is_listed_once(tracking, capsys):
    uri, client, eid, experiment = tracking
    runs = {}
    for model, srg in (("resnet18", 0.3), ("resnet50", 0.4)):
        runs[model] = log_run(client, eid, "lrp", "epsilon_gamma_box", srg, [1.0, 0.5], [1.0, 0.9],
                              model=model, dataset="imagenet", output_dir=f"/out/{model}")
    again = log_run(client, eid, "lrp", "epsilon_gamma_box", 0.4, [1.0, 0.5], [1.0, 0.9],  # a later sweep's reuse
                    model="resnet50", dataset="imagenet", output_dir="/out/resnet50")
    table = find_runs(uri, experiment)
    assert table["model"].tolist() == ["resnet50", "resnet18"] and set(table["dataset"]) == {"imagenet"}
    assert table["run_id"].tolist() == [again, runs["resnet18"]]  # the newest run of a folder stands for it
    assert main(["--tracking-uri", uri, "--experiment", experiment]) == 0
    header, _, first, second = capsys.readouterr().out.splitlines()
    assert "model" in header and "dataset" in header and "run_id" in header
    assert "resnet50" in first and again[:8] in first and "resnet18" in second


def test_ranks_across_all_metrics_by_mean_rank_or_by_one_metric_and_logs_the_rank_figure(tracking, tmp_path, capsys):
    uri, client, eid, experiment = tracking
    parent = client.create_run(eid, run_name="sweep", tags={"sweep": "true"}).info.run_id
    curve = ([1.0, 0.5], [1.0, 0.9])
    # SRG favours a, entropy (lower is better) and the pointing game favour b: b has the best mean rank
    a = log_run(client, eid, "lrp", "epsilon_plus", 0.5, *curve, parent,
                {"complexity/entropy": 6.0, "localisation/pointing_game": 0.2})
    b = log_run(client, eid, "gradient", "none", 0.3, *curve, parent,
                {"complexity/entropy": 5.0, "localisation/pointing_game": 0.9})
    c = log_run(client, eid, "smoothgrad", "none", 0.1, *curve, parent,
                {"complexity/entropy": 7.0, "localisation/pointing_game": 0.5})
    assert find_runs(uri, experiment, parent)["run_id"].tolist() == [a, b, c]
    assert find_runs(uri, experiment, parent, by="mean_rank")["run_id"].tolist() == [b, a, c]
    assert find_runs(uri, experiment, parent, by="complexity/entropy")["run_id"].tolist() == [b, a, c]
    assert find_runs(uri, experiment, parent, by="localisation/pointing_game")["run_id"].tolist() == [b, c, a]
    assert find_runs(uri, experiment, parent, by="auc_morf")["run_id"].tolist() == [a, b, c]  # lower is better
    with pytest.raises(ValueError, match="--by robustness/x: no such metric in these runs; choose mean_rank or"):
        find_runs(uri, experiment, parent, by="robustness/x")

    assert main(["--tracking-uri", uri, "--experiment", experiment, "--parent", parent, "--by", "mean_rank",
                 "--log"]) == 0
    assert "gradient-none" in capsys.readouterr().out.splitlines()[2]
    logged = Path(client.download_artifacts(parent, "comparison", str(tmp_path)))
    ranking = json.loads((logged / "metric_ranking.json").read_text())
    columns = ranking["columns"]
    assert columns[0] == "run" and columns[-1] == "run_id"  # the name first, the id last
    rows = {row[columns.index("run")]: row for row in ranking["data"]}
    assert rows["gradient-none"][columns.index("mean rank")] == pytest.approx((2 + 1 + 1) / 3)
    assert rows["lrp-epsilon_plus"][columns.index("faithfulness/srg rank")] == 1
    assert "faithfulness/auc_morf rank" not in columns  # a part of SRG, not a metric of its own
    with Image.open(logged / "metric_ranks.png") as plot:
        assert plot.size[0] > 300
    page = Path(client.download_artifacts(parent, "report.html", str(tmp_path))).read_text()
    assert page.count('src="data:image/png;base64,') == 2 and "<script" not in page  # ranks and curves, inline
    assert "<th>mean rank</th>" in page and "<th>faithfulness/srg (higher is better)</th>" in page
    assert page.index("<td>gradient-none</td>") < page.index("<td>lrp-epsilon_plus</td>")  # best mean rank first
