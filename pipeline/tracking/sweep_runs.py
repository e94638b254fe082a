"""A sweep's parent run as MLflow and the output folders record it: its tags, the file that ties a job's folder to
it, and ending the parents whose driver died. Tracking owns these so that publishing a run needs nothing of the
scale-out code that creates the parents (``pipeline.scaleout.sweep``)."""
import logging
from typing import Optional

from pipeline.locks import on_this_host, process_alive
from pipeline.stages.results import RunFolder, read_json

log = logging.getLogger(__name__)

#: In a job's output folder: the sweep's parent run (with the tracking URI and experiment it lives in).
PARENT_FILE = "sweep_parent.json"
#: In the sweep folder: the parent run of the latest sweep started there (read by ``pipeline.scheduled``).
SWEEP_FILE = "mlflow_parent.json"
SWEEP_TAG = "sweep"
DRIVER_TAG = "sweep_driver"  # <host>:<pid> of the process that runs the sweep and ends its parent run


def end_orphaned_sweeps(client, experiment_id: str) -> list[str]:
    """Mark KILLED every RUNNING sweep parent whose driver process on this host is gone (``kill -9``, a crash);
    returns their run ids. Parents driven from another host are left alone: whether those live is unknown here."""
    running = client.search_runs([experiment_id], f"tags.{SWEEP_TAG} = 'true' and attributes.status = 'RUNNING'")
    orphans = [r.info.run_id for r in running
               if on_this_host(r.data.tags.get(DRIVER_TAG, "")) and not process_alive(r.data.tags[DRIVER_TAG])]
    for run_id in orphans:
        client.set_terminated(run_id, "KILLED")
        log.warning("sweep parent run %s was left RUNNING by a driver that is gone: marked KILLED", run_id)
    return orphans


def parent_run_of(folder: RunFolder, uri: str, experiment: str) -> Optional[str]:
    """The parent run a folder's run belongs under when published to ``uri``/``experiment`` (None: no sweep)."""
    path = folder.path / PARENT_FILE
    if not path.exists():
        return None
    record = read_json(path)
    same_place = record["tracking_uri"] == uri and record["experiment"] == experiment
    return record["parent_run_id"] if same_place else None
