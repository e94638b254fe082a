"""Models from MLflow: ``model=mlflow model.uri=models:/<name>@<alias>`` (or ``models:/<name>/<version>``,
``runs:/<run_id>/<path>``), logged with ``mlflow.pytorch.log_model`` in either of MLflow 3's formats.

A URI is resolved to one fixed model (an alias moves, a version does not) before anything is computed: the version
names the run's output folder, so a moved alias computes afresh, and its name, version, alias and source run become
the run's tags. The ``pt2`` format (``torch.export``, no pickle) loads back as a graph of aten ops, which
``xai.from_exported`` rebuilds as modules so that every method, LRP included, explains it as the original module;
the ``pickle`` format loads the module itself.
"""
import re
from dataclasses import dataclass
from typing import Optional

from torch import fx, nn

from pipeline.tracking.store import TrackingUnavailable, check_reachable, fluent_uri

URI_FORMS = "models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>"
_ALIAS = re.compile(r"models:/(?P<name>[^/@]+)@(?P<alias>[^/@]+)")
_VERSION = re.compile(r"models:/(?P<name>[^/@]+)/(?P<version>\d+)")
_RUN = re.compile(r"runs:/(?P<run_id>[0-9a-fA-F]+)/(?P<path>.+)")


@dataclass(frozen=True)
class MlflowModel:
    """What a ``model.uri`` names right now: the URI that loads exactly that model, and where it comes from."""

    uri: str  # as configured
    fixed_uri: str  # models:/<name>/<version> or runs:/<run_id>/<path>: what is loaded
    tracking_uri: str  # the server (and registry) it is loaded from
    name: Optional[str] = None
    version: Optional[str] = None
    alias: Optional[str] = None
    run_id: Optional[str] = None
    model_id: Optional[str] = None  # MLflow 3's logged model, linked to the pipeline's run

    def tags(self) -> dict[str, str]:
        """The run tags ``model.uri`` and ``model.registry.{name,version,alias,run_id}`` (those that are known)."""
        registry = {"name": self.name, "version": self.version, "alias": self.alias, "run_id": self.run_id}
        return {"model.uri": self.uri, **{f"model.registry.{k}": v for k, v in registry.items() if v is not None}}


def label(uri: Optional[str]) -> str:
    """A folder-safe name for the model of ``uri``: ``<name>-<alias>``, ``<name>-v<version>``, ``run-<id>``."""
    text = str(uri or "")
    for pattern, form in ((_ALIAS, "{name}-{alias}"), (_VERSION, "{name}-v{version}"), (_RUN, "run-{run_id}")):
        match = pattern.fullmatch(text)
        if match:
            return re.sub(r"[^A-Za-z0-9_.-]+", "_", form.format(**match.groupdict()))[:100]
    return "mlflow"


def resolve(uri: Optional[str], tracking_uri: str) -> MlflowModel:
    """The model ``uri`` names in the tracking server / registry at ``tracking_uri``; a clear error when there is
    none (naming what exists), and a ``ConnectionError`` when the server does not answer."""
    if not uri:
        raise ValueError(f"model=mlflow needs model.uri={URI_FORMS}")
    if not any(pattern.fullmatch(uri) for pattern in (_ALIAS, _VERSION, _RUN)):  # before asking the server
        raise ValueError(f"model.uri={uri} is not a model URI: use {URI_FORMS}")
    from mlflow.exceptions import MlflowException

    client = _client(uri, tracking_uri)
    try:
        if match := _ALIAS.fullmatch(uri):
            return _of_version(uri, tracking_uri, *_by_alias(client, uri, match["name"], match["alias"]))
        if match := _VERSION.fullmatch(uri):
            return _of_version(uri, tracking_uri, _by_version(client, uri, match["name"], match["version"]), None)
        match = _RUN.fullmatch(uri)
        run = _run(client, uri, match["run_id"])
        return MlflowModel(uri, uri, tracking_uri, run_id=run.info.run_id)
    except MlflowException as error:  # anything else the server refuses
        raise ValueError(f"model.uri={uri}: {error.message}") from error


def load(model: MlflowModel) -> nn.Module:
    """The torch module of a resolved model (pt2: rebuilt from its graph), in eval mode, on the CPU."""
    import mlflow.pytorch
    from mlflow.models import get_model_info

    with fluent_uri(model.tracking_uri):
        flavors = get_model_info(model.fixed_uri).flavors
        if "pytorch" not in flavors:
            raise TypeError(f"model.uri={model.uri} is a model of the flavor(s) {', '.join(flavors)}, not a PyTorch "
                            "one: log the classifier with mlflow.pytorch.log_model")
        loaded = rebuilt_if_exported(mlflow.pytorch.load_model(model.fixed_uri, map_location="cpu"))
    if not isinstance(loaded, nn.Module):
        raise TypeError(f"model.uri={model.uri} holds a {type(loaded).__name__}, not a torch.nn.Module: log the "
                        "classifier module itself with mlflow.pytorch.log_model")
    return loaded.eval()


def rebuilt_if_exported(loaded: object) -> object:
    """A ``pt2`` model (MLflow 3's default format loads as torch.export's graph module) rebuilt as modules by
    ``xai.from_exported``; anything else as it is."""
    if isinstance(loaded, fx.GraphModule) and hasattr(loaded, "_in_spec"):
        from xai.exported import from_exported

        return from_exported(loaded)
    return loaded


def _client(uri: str, tracking_uri: str):
    from mlflow import MlflowClient

    try:
        check_reachable(tracking_uri)
    except TrackingUnavailable as error:
        raise ConnectionError(f"model.uri={uri}: {error}; start the server or point tracking.uri (or "
                              "MLFLOW_TRACKING_URI) at the one that holds the model. Nothing was computed") from None
    return MlflowClient(tracking_uri=tracking_uri)  # the registry: MLFLOW_REGISTRY_URI, else the same server


def _registered(client, uri: str, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models())
        raise ValueError(f"model.uri={uri}: no registered model is named {name!r}; registered: "
                         f"{', '.join(names) or 'none'}") from None


def _by_alias(client, uri: str, name: str, alias: str) -> tuple:
    registered = _registered(client, uri, name)
    aliases = dict(registered.aliases or {})
    if alias not in aliases:
        known = ", ".join(f"{a} (version {v})" for a, v in sorted(aliases.items())) or "none"
        raise ValueError(f"model.uri={uri}: the model {name!r} has no alias {alias!r}; its aliases: {known}. Set one "
                         f"with MlflowClient().set_registered_model_alias({name!r}, {alias!r}, <version>)")
    return client.get_model_version(name, str(aliases[alias])), alias


def _by_version(client, uri: str, name: str, version: str):
    from mlflow.exceptions import MlflowException

    _registered(client, uri, name)
    try:
        found = client.get_model_version(name, version)
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise ValueError(f"model.uri={uri}: the model {name!r} has no version {version}; its versions: "
                         f"{', '.join(map(str, versions)) or 'none'}") from None
    return found


def _of_version(uri: str, tracking_uri: str, version, alias: Optional[str]) -> MlflowModel:
    """MLflow 3 names the logged model of a version in its source (``models:/m-<id>``) and, on some stores, in
    ``model_id``."""
    source = str(version.source or "")
    model_id = getattr(version, "model_id", None) or (source[len("models:/"):] if source.startswith("models:/m-")
                                                      else None)
    return MlflowModel(uri, f"models:/{version.name}/{version.version}", tracking_uri, name=version.name,
                       version=str(version.version), alias=alias, run_id=version.run_id or None, model_id=model_id)


def _run(client, uri: str, run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run_id)
    except MlflowException:
        raise ValueError(f"model.uri={uri}: there is no run {run_id} in this tracking server") from None
