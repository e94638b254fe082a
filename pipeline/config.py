"""The pipeline's config schema: dataclasses registered in Hydra's ConfigStore.

Every YAML option in ``conf/`` starts from one of these schemas (``defaults: [base_..., _self_]``), so a
wrong type or an unknown key fails at composition, before any work, with the key named.
"""
import hashlib
import json
import re
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
#: conf/config.yaml's search path for tuned composites (outputs/conf): most folders have none, which is no news.
warnings.filterwarnings("ignore", message=r"provider=hydra\.searchpath in main, path=outputs/conf is not available")

#: Config sections that say where results go, not what they are: left out of the run's identity.
NOT_IN_IDENTITY = ("hydra", "tracking", "output_root")
#: Dataset keys that say which part of the work a job does: all shards (and their merge) share one identity.
SHARDING_KEYS = ("num_shards", "shard")


class DatasetKind(Enum):
    digits = "digits"
    digits_localisation = "digits_localisation"
    image_folder = "image_folder"
    cifar10 = "cifar10"


class OnCorrupt(Enum):
    skip = "skip"
    fail = "fail"


class ModelKind(Enum):
    bundled = "bundled"
    torchvision = "torchvision"
    custom = "custom"
    mlflow = "mlflow"


class TargetChoice(Enum):
    predicted = "predicted"
    label = "label"


@dataclass
class GradientMethodConf:
    """Gradient and Input x Gradient take no parameters."""

    name: str = MISSING


@dataclass
class SmoothGradConf:
    name: str = "smoothgrad"
    samples: int = 50
    noise_level: float = 0.1
    fold_batchnorm: bool = False  # opt-in speed-up: equal up to rounding, which can break ReLU/MaxPool ties


@dataclass
class IntegratedGradientsConf:
    name: str = "integrated_gradients"
    steps: int = 50
    fold_batchnorm: bool = False  # opt-in speed-up: equal up to rounding, which can break ReLU/MaxPool ties


@dataclass
class DeepLIFTConf:
    name: str = "deeplift"
    baseline: float = 0.0  # the reference input: this value everywhere
    batch_size: int = 32  # (sample, baseline) pairs per forward/backward


@dataclass
class ShapleyConf:
    """DeepLIFTShap, GradientSHAP and ExpectedGradients: baselines drawn (seeded) from the explained dataset."""

    name: str = MISSING
    baselines: int = 8  # how many images of the dataset form the background set
    samples: int = 16  # GradientSHAP / ExpectedGradients: points per sample
    stdevs: float = 0.0  # GradientSHAP: noise on the input
    batch_size: int = 32


@dataclass
class SurrogateConf:
    """KernelSHAP and LIME: a surrogate model fitted per sample on feature groups (xai.perturbation.features)."""

    name: str = MISSING
    features: str = "slic"  # slic (superpixels) or grid (square cells)
    segments: int = 50  # slic: about how many superpixels
    cell: Optional[int] = None  # grid: pixels per cell side; null: an 8 x 8 grid over the longer side
    samples: int = 256  # coalitions per sample
    baseline: float = 0.0  # the value of switched-off features
    kernel_width: float = 1.0  # LIME: width of the kernel on cosine distances
    alpha: float = 0.01  # LIME: the Lasso's L1 weight (0: weighted least squares)
    batch_size: int = 64  # perturbed images per forward pass


@dataclass
class PatternConf:
    """PatternNet and PatternAttribution: patterns fitted once on the fit split (pipeline.stages.patterns, cached)."""

    name: str = MISSING
    fit_split: str = "train"  # the split of the run's dataset the patterns are fitted on
    fit_limit: Optional[int] = None  # its first N samples; null: all
    batch_size: int = 64  # images per forward pass of the fit


@dataclass
class LRPConf:
    name: str = "lrp"


@dataclass
class OcclusionConf:
    name: str = "occlusion"
    window: int = 8  # square windows over all channels, in pixels
    stride: int = 4
    baseline: float = 0.0  # what covers a window
    batch_size: int = 64  # covered images per forward pass


@dataclass
class CAMConf:
    """GradCAM, GradCAM++, LayerCAM and ScoreCAM: the layer whose feature maps are weighted."""

    name: str = MISSING
    layer: Optional[str] = None  # a module path; null: the last convolutional block (xai.cam.default_layer)
    batch_size: int = 32  # ScoreCAM: masked images per forward pass


@dataclass
class NoCompositeConf:
    name: str = "none"


@dataclass
class CompositeConf:
    """Zennit-style presets that only take ``epsilon``."""

    name: str = MISSING
    epsilon: float = 1e-6


@dataclass
class BoxCompositeConf:
    """EpsilonGammaBox: ``low``/``high`` bound the input values (the ZBox rule at the first layer)."""

    name: str = "epsilon_gamma_box"
    epsilon: float = 1e-6
    gamma: float = 0.25
    low: Any = MISSING  # a number, or a list with one number per channel
    high: Any = MISSING


@dataclass
class AttentionCompositeConf:
    """CPLRP and AttnLRP (transformers): Gamma on Linear and Conv layers (a gamma of 0: the Epsilon rule there);
    ``epsilon`` is the Epsilon and uniform (matmul) rules'."""

    name: str = MISSING
    gamma_linear: float = 0.0
    gamma_conv: float = 0.25
    epsilon: float = 1e-6


@dataclass
class ModelConf:
    name: str = MISSING
    kind: ModelKind = MISSING
    arch: Optional[str] = None  # torchvision name, e.g. resnet18; bundled: digits_cnn (null), digits_vit, digits_localisation_cnn
    weights: Optional[str] = None  # torchvision weights name, used only when torch's cache has the file
    checkpoint: Optional[str] = MISSING  # local state_dict (weights_only=True); each option sets it
    num_classes: Optional[int] = None
    module: Optional[dict[str, Any]] = None  # custom: {_target_: pkg.Net, **constructor kwargs}
    uri: Optional[str] = None  # mlflow: models:/<name>@<alias>, models:/<name>/<version> or runs:/<run_id>/<path>
    strip_softmax: bool = True


@dataclass
class DatasetConf:
    name: str = MISSING
    kind: DatasetKind = MISSING
    path: Optional[str] = MISSING  # each option sets it (null for the bundled digits)
    split: str = "test"
    mask_path: Optional[str] = None  # image_folder: ground-truth masks <mask_path>/<class>/<stem>.png (localisation)
    limit: Optional[int] = None  # explain and score only the first N samples
    num_shards: int = 1  # sharding: the i-th of K disjoint parts (see pipeline.stages.data.select_samples)
    shard: int = 0
    transforms: list[Any] = field(default_factory=list)  # torchvision transforms as _target_ nodes
    input_low: Any = 0.0  # the range of the model's input values (after transforms), for ZBox: a number or per channel
    input_high: Any = 1.0
    on_corrupt: OnCorrupt = OnCorrupt.skip
    max_pixels: int = 89_478_485  # larger images count as unreadable (PIL's decompression-bomb bound)
    num_workers: int = 0


@dataclass
class EvaluationConf:
    name: str = "pixel_flipping"
    steps: Optional[int] = None  # flip steps whatever the image size (neither given: 32 steps)
    features_in_step: Optional[int] = None  # or: pixels flipped per step
    baseline: Any = 0.0  # a number, or "mean" / "blur" / "uniform"
    unit: str = "pixel"
    softmax: bool = True
    batch_size: Optional[int] = None  # perturbed inputs per forward pass (None: 512, fewer for large images)
    # scored besides pixel flipping (srg) and complexity (sparseness, entropy), which every run scores; names in
    # pipeline.stages.metrics.SPECS, e.g. [srg, road, max_sensitivity, pointing_game]
    metrics: list[str] = field(default_factory=lambda: ["srg"])
    params: dict[str, Any] = field(default_factory=dict)  # per metric: constructor arguments, e.g. road: {noise: 0.05}


@dataclass
class TrackingConf:
    uri: Optional[str] = None  # else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db
    experiment: str = "xai-pipeline"
    publish: bool = True  # false: results stay in the output folder; `python -m pipeline.publish` sends them
    tags: dict[str, str] = field(default_factory=dict)  # extra run tags, e.g. tracking.tags.trigger=cron
    timeout_s: float = 30.0  # publishing gives up (and prints the publish command) after about this long


@dataclass
class Config:
    method: Any = MISSING
    composite: Any = MISSING
    model: ModelConf = MISSING
    dataset: DatasetConf = MISSING
    evaluation: EvaluationConf = MISSING
    tracking: TrackingConf = MISSING
    device: str = "auto"  # auto = cuda when present, else cpu
    seed: int = 0
    batch_size: int = 32
    target: TargetChoice = TargetChoice.predicted
    heatmaps: int = 8  # heatmaps kept and logged as images: the first N samples, the same keys in every run
    output_root: str = "outputs"


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore; the YAML options name them in their defaults lists."""
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(group="schema/method", name="gradient", node=GradientMethodConf)
    cs.store(group="schema/method", name="smoothgrad", node=SmoothGradConf)
    cs.store(group="schema/method", name="integrated_gradients", node=IntegratedGradientsConf)
    cs.store(group="schema/method", name="lrp", node=LRPConf)
    cs.store(group="schema/method", name="deeplift", node=DeepLIFTConf)
    cs.store(group="schema/method", name="shapley", node=ShapleyConf)
    cs.store(group="schema/method", name="occlusion", node=OcclusionConf)
    cs.store(group="schema/method", name="surrogate", node=SurrogateConf)
    cs.store(group="schema/method", name="pattern", node=PatternConf)
    cs.store(group="schema/method", name="cam", node=CAMConf)
    cs.store(group="schema/composite", name="none", node=NoCompositeConf)
    cs.store(group="schema/composite", name="composite", node=CompositeConf)
    cs.store(group="schema/composite", name="box_composite", node=BoxCompositeConf)
    cs.store(group="schema/composite", name="attention_composite", node=AttentionCompositeConf)
    cs.store(group="schema/model", name="model", node=ModelConf)
    cs.store(group="schema/dataset", name="dataset", node=DatasetConf)
    cs.store(group="schema/evaluation", name="evaluation", node=EvaluationConf)
    cs.store(group="schema/tracking", name="tracking", node=TrackingConf)


def config_hash(cfg: DictConfig) -> str:
    """A short digest of everything that decides the results (all but ``NOT_IN_IDENTITY`` and the sharding keys)."""
    identity = {}
    for key in cfg:
        if key in NOT_IN_IDENTITY:
            continue  # never resolve these: hydra.run.dir itself interpolates this hash
        value = cfg[key]
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True, enum_to_str=True)
        identity[key] = value.name if isinstance(value, Enum) else value
    if isinstance(identity.get("dataset"), dict):
        identity["dataset"] = {k: v for k, v in identity["dataset"].items() if k not in SHARDING_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _config_hash_resolver(*, _root_: DictConfig) -> str:
    return config_hash(_root_)


def _run_identity_resolver(*, _root_: DictConfig) -> str:
    """The output folder's name: the config hash and a digest of the checkpoint, data and code
    (pipeline.tracking.identity)."""
    from pipeline.tracking.identity import identity_digest, input_identity

    return identity_digest(config_hash(_root_), input_identity(_root_))


#: A value that becomes a folder name: letters, digits and ``-_.``, not dots only (so never ``..``: nothing lands
#: outside output_root) and not empty (no path level dropped).
SAFE_PATH_PART = re.compile(r"[A-Za-z0-9_.-]+")


def safe_path_part(value: Any, key: str) -> str:
    """``value`` as one folder name, or an error naming ``key``: it must not climb out of, or vanish from, a path."""
    text = str(value)
    if not SAFE_PATH_PART.fullmatch(text) or not text.strip("."):
        raise ValueError(f"{key}={text!r} cannot name a folder: use letters, digits and - _ . only (not empty, not "
                         f"dots only), e.g. {key}={re.sub(r'[^A-Za-z0-9_-]+', '_', text).strip('_') or 'name'}")
    return text


def _path_part_resolver(key: str, *, _root_: DictConfig) -> str:
    """``${path_part:<key>}``: the config value at ``key`` as a safe folder name (checked before Hydra writes)."""
    return safe_path_part(OmegaConf.select(_root_, key), key)


def run_name(method: str, composite: str) -> str:
    """``<method>-<composite>``, with ``none`` for methods that take no composite: the MLflow run name."""
    from pipeline.stages.explain import uses_composite

    method = safe_path_part(method, "method.name")
    return f"{method}-{safe_path_part(composite, 'composite.name') if uses_composite(method) else 'none'}"


def shard_subdir(shard: int, num_shards: int) -> str:
    """``/shard-<i>-of-<K>`` below the config's folder for a shard job, nothing for an unsharded run."""
    return f"/shard-{shard}-of-{num_shards}" if int(num_shards) > 1 else ""


def _mlflow_model_label(uri: Optional[str]) -> str:
    from pipeline.tracking.registry import label

    return label(uri)


for _name, _resolver in (
    ("config_hash", _config_hash_resolver), ("mlflow_model_label", _mlflow_model_label),
    ("run_identity", _run_identity_resolver), ("run_name", run_name), ("shard_subdir", shard_subdir),
    ("path_part", _path_part_resolver),
):
    if not OmegaConf.has_resolver(_name):
        OmegaConf.register_new_resolver(_name, _resolver)

register_configs()


#: Config values that become folder names under output_root.
PATH_KEYS = ("tracking.experiment", "model.name", "dataset.name", "method.name", "composite.name")


def validate(cfg: DictConfig) -> None:
    """Fail before any work on a missing value (``???``) or a key added with ``+`` that no schema knows."""
    missing = sorted(OmegaConf.missing_keys({k: cfg._get_node(k) for k in cfg if k != "hydra"}))
    if missing:
        raise ValueError(f"missing config value(s): {', '.join(missing)}; set them, e.g. {missing[0]}=<value>")
    _reject_unknown_keys(cfg, Config, prefix="")
    _check_counts(cfg)
    for key in PATH_KEYS:
        safe_path_part(OmegaConf.select(cfg, key), key)


def _check_counts(cfg: DictConfig) -> None:
    """Counts that no type annotation can bound: name the key, the value and the range."""
    if cfg.heatmaps < 0:
        raise ValueError(f"heatmaps={cfg.heatmaps} must be >= 0 (the number of samples whose heatmaps are kept)")
    if cfg.batch_size < 1:
        raise ValueError(f"batch_size={cfg.batch_size} must be >= 1")
    if cfg.dataset.num_shards < 1:
        raise ValueError(f"dataset.num_shards={cfg.dataset.num_shards} must be >= 1 (1: no sharding)")
    if not 0 <= cfg.dataset.shard < cfg.dataset.num_shards:
        raise ValueError(f"dataset.shard={cfg.dataset.shard} must be in 0..{cfg.dataset.num_shards - 1} "
                         f"(dataset.num_shards={cfg.dataset.num_shards})")
    if cfg.dataset.max_pixels < 1:
        raise ValueError(f"dataset.max_pixels={cfg.dataset.max_pixels} must be >= 1 (larger images are unreadable)")
    for key in ("steps", "features_in_step", "batch_size"):
        value = cfg.evaluation.get(key)
        if value is not None and value < 1:
            raise ValueError(f"evaluation.{key}={value} must be >= 1")


def _reject_unknown_keys(node: DictConfig, schema: type, prefix: str) -> None:
    known = {f.name for f in fields(schema)} | ({"hydra"} if not prefix else set())
    unknown = sorted(set(node.keys()) - known)
    if unknown:
        names = ", ".join(prefix + k for k in unknown)
        raise ValueError(f"unknown config key(s) {names}; valid keys here: {', '.join(sorted(known - {'hydra'}))}")
    for key in node.keys():
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_none() and is_dataclass(OmegaConf.get_type(child)):
            _reject_unknown_keys(child, OmegaConf.get_type(child), prefix + f"{key}.")
