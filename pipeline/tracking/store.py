"""The MLflow tracking store: which one, reached within a bound, and (for SQLite) created once and safely.

MLflow builds a new SQLite store's schema in place, on first use: four runs started at once on a fresh file race
through its migrations (``table _alembic_tmp_latest_metrics already exists``) and a kill mid-creation leaves a file
that no client can open again. ``ensure_store`` builds the schema in a temporary file beside the store, under an
exclusive lock, and links it into place only when no store is there, so the store either does not exist or is whole.
"""
import os
import sqlite3
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

from pipeline.locks import exclusive_lock

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"

#: MLflow's HTTP settings during a bounded publish (unless the user set them): one retry, short backoff.
_HTTP_RETRIES, _HTTP_BACKOFF = 1, 1


class TrackingUnavailable(RuntimeError):
    """The tracking server cannot be reached, or the store cannot be opened; the results stay in the output folder."""


def resolve_tracking_uri(uri: Optional[str] = None) -> str:
    """``tracking.uri`` when given, else ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` (working directory)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


@contextmanager
def fluent_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API (``mlflow.search_runs``, ``mlflow.pytorch.load_model``) pointed at ``uri`` meanwhile (its
    registry too, unless ``MLFLOW_REGISTRY_URI`` names another). The fluent API reads a process-wide URI, and setting
    it also exports ``MLFLOW_TRACKING_URI`` to every subprocess started later; afterwards both are as they were."""
    import mlflow

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def sqlite_path(uri: str) -> Optional[Path]:
    """The file of a ``sqlite:///`` store (relative to the working directory unless ``sqlite:////abs``)."""
    return Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (instead of MLflow's minutes of retries) when an HTTP tracking server does not answer."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as response:
            if response.status == 200:
                return
    except (urllib.error.URLError, OSError) as error:
        raise TrackingUnavailable(f"the MLflow server at {uri} is unreachable ({error})") from error
    raise TrackingUnavailable(f"the MLflow server at {uri} is not healthy")


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def _schema_version(path: Path) -> Optional[str]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        row = db.execute("SELECT version_num FROM alembic_version").fetchone()
    return row[0] if row else None


def _is_whole(path: Path) -> bool:
    """A store MLflow finished creating: its schema version is stamped (an older one MLflow itself upgrades)."""
    try:
        return "alembic_version" in _tables(path) and _schema_version(path) is not None
    except sqlite3.OperationalError as error:
        return "locked" in str(error)  # another client is writing to it: it exists and works
    except sqlite3.Error:
        return False


def ensure_store(uri: str) -> None:
    """Create a ``sqlite:///`` store once, atomically; refuse a broken one with the way to recover."""
    path = sqlite_path(uri)
    if path is None or (path.exists() and _is_whole(path)):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(path.with_name(path.name + ".lock"), wait_s=None):
        for stale in path.parent.glob(f".{path.name}.*.building"):  # left by a creator that was killed
            stale.unlink(missing_ok=True)
        if path.exists() and _is_whole(path):
            return  # made by the process that held the lock before us
        if path.exists() and path.stat().st_size and _tables(path):
            raise TrackingUnavailable(
                f"the MLflow store {path} is broken (its schema was never completed: a creation was interrupted). "
                f"The results folders are intact: move {path} aside, then publish each folder again with "
                "`python -m pipeline.publish <output folder>` (a fresh store is created on first use)")
        building = path.with_name(f".{path.name}.{os.getpid()}.building")
        _create_schema(building)
        try:
            if path.exists():  # an empty file (a client connected and left): nothing in it to keep
                os.replace(building, path)
            else:
                os.link(building, path)  # never over a store that appeared meanwhile
        except FileExistsError:
            pass
        finally:
            building.unlink(missing_ok=True)


def _create_schema(path: Path) -> None:
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore(f"sqlite:///{path.resolve()}", DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)
    store.engine.dispose()


def tracking_client(uri: str, reach_timeout: float = 5.0):
    """An ``MlflowClient`` on a store that is reachable and whole (a fresh SQLite store is created first)."""
    from mlflow import MlflowClient

    check_reachable(uri, reach_timeout)
    ensure_store(uri)
    return MlflowClient(tracking_uri=uri)


def get_or_create_experiment(client, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    try:
        return client.create_experiment(name)
    except MlflowException:  # created meanwhile by a parallel job
        return client.get_experiment_by_name(name).experiment_id


@contextmanager
def bounded_requests(timeout_s: float) -> Iterator[float]:
    """MLflow's HTTP requests bounded so that a server that stops answering fails a request within ``timeout_s``:
    yields the bound of one request (two tries of timeout_s / 3 each, plus the backoff), variables set by the user
    are kept."""
    per_try = max(1, int(timeout_s // 3))
    settings = {"MLFLOW_HTTP_REQUEST_TIMEOUT": str(per_try), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": str(_HTTP_RETRIES),
                "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": str(_HTTP_BACKOFF)}
    added = {k: v for k, v in settings.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield (_HTTP_RETRIES + 1) * per_try + _HTTP_BACKOFF * 2 ** _HTTP_RETRIES
    finally:
        for key in added:
            os.environ.pop(key, None)
