"""The regression check on runs logged directly with MLflow's client (SRGs chosen by the test).

Each run is what a scheduled job logs: tags ``schedule``, ``config_hash``, a run name and the metric
``faithfulness/srg``. Start times are set explicitly, so "previous" is unambiguous.
"""
import pytest

from pipeline.exit_codes import ExitCode
from pipeline.regression import check, main

DAY = 24 * 3600 * 1000


def log_run(client, experiment_id, name, config_hash, srg, day, schedule="nightly", status="FINISHED"):
    run = client.create_run(experiment_id, start_time=1_800_000_000_000 + day * DAY, run_name=name,
                            tags={"schedule": schedule, "config_hash": config_hash, "method": name})
    client.log_metric(run.info.run_id, "faithfulness/srg", srg)
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_planted_regression_is_flagged_tagged_and_fails(tracking, capsys):
    uri, client, eid, experiment = tracking
    log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.40, day=0)
    previous = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.42, day=1)
    dropped = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.30, day=2)  # drop 0.12 > 0.05
    log_run(client, eid, "gradient-none", "bbb", 0.20, day=1)
    steady = log_run(client, eid, "gradient-none", "bbb", 0.19, day=2)  # drop 0.01: within the threshold

    assert main(["--tracking-uri", uri, "--experiment", experiment, "--threshold", "0.05"]) == ExitCode.REGRESSION
    out = capsys.readouterr().out
    assert "1 of 2 config(s) regressed" in out and "REGRESSION" in out

    tags = client.get_run(dropped).data.tags
    assert tags["regression"] == "true"
    assert tags["regression.previous_run_id"] == previous  # the previous run, not the oldest
    assert float(tags["regression.srg_drop"]) == pytest.approx(0.12)
    assert float(tags["regression.previous_srg"]) == pytest.approx(0.42)
    assert client.get_run(steady).data.tags["regression"] == "false"


def test_unchanged_rerun_and_first_run_pass(tracking):
    uri, client, eid, experiment = tracking
    log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.42, day=0)
    rerun = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.42, day=1)
    first = log_run(client, eid, "smoothgrad-none", "ccc", 0.10, day=1)

    assert main(["--tracking-uri", uri, "--experiment", experiment]) == ExitCode.OK
    assert client.get_run(rerun).data.tags["regression"] == "false"
    first_tags = client.get_run(first).data.tags
    assert first_tags["regression"] == "false" and "regression.previous_run_id" not in first_tags


def test_only_scheduled_finished_runs_of_the_same_config_count(tracking):
    uri, client, eid, experiment = tracking
    log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.90, day=0, schedule="manual")  # not scheduled
    log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.90, day=1, status="FAILED")  # not finished
    log_run(client, eid, "lrp-epsilon_plus", "zzz", 0.90, day=1)  # another config (e.g. another subset)
    baseline = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.40, day=0)
    newest = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.39, day=2)

    verdicts = {v.run_id: v for v in check(uri, experiment, threshold=0.05)}
    assert verdicts[newest].previous_run_id == baseline and not verdicts[newest].regressed
    assert verdicts[newest].drop == pytest.approx(0.01)


def test_parent_limits_the_check_to_one_sweep(tracking):
    uri, client, eid, experiment = tracking
    log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.40, day=0)
    old_drop = log_run(client, eid, "lrp-epsilon_plus", "aaa", 0.10, day=1)  # judged on an earlier night
    parent = client.create_run(eid, run_name="sweep", tags={"sweep": "true", "schedule": "nightly"}).info.run_id
    child = log_run(client, eid, "gradient-none", "bbb", 0.20, day=2)
    client.set_tag(child, "mlflow.parentRunId", parent)

    verdicts = check(uri, experiment, threshold=0.05, parent=parent)
    assert [v.run_id for v in verdicts] == [child] and not verdicts[0].regressed
    assert "regression" not in client.get_run(old_drop).data.tags


def test_bad_usage_exits_64_not_2(tracking):
    uri, _, _, _ = tracking
    with pytest.raises(SystemExit) as exited:
        main(["--tracking-uri", uri, "--experiment", "no-such-experiment"])
    assert exited.value.code == ExitCode.USAGE
    with pytest.raises(SystemExit) as exited:
        main(["--threshold", "-1"])
    assert exited.value.code == ExitCode.USAGE
