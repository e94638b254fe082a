"""``python -m pipeline.merge <config folder or sweep dir>``: merge the shards of each config into one published run.

A shard job (``dataset.num_shards=K dataset.shard=i``) writes ``<config folder>/shard-<i>-of-<K>/`` and
publishes nothing: it is a part. The merge takes a set of K shards only when all of them are COMPLETE
(else it refuses, naming the missing shards and the command that reruns each), puts every shard's batch
files back at their index in the unsharded batch plan in ``<config folder>/merged-<K>-shards/``,
summarises that folder with the code that summarises an unsharded run (``pipeline.stages.report.summarize``),
and publishes it with the idempotent ``pipeline.tracking.publishing.publish``, tagged ``shards=K``. Because the
batches, their samples and their seeds are those of the unsharded run, so are the metrics.
"""
import argparse
import logging
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

from pipeline.stages.data import plan_index
from pipeline.stages.results import RunFolder, atomic_write, read_json

log = logging.getLogger(__name__)

SHARD_DIR = re.compile(r"shard-(\d+)-of-(\d+)")
SHARDS_TAG = "shards"


@dataclass(frozen=True)
class ShardSet:
    """The K shard folders of one config (some may be missing) and the folder they merge into."""

    config_folder: Path
    num_shards: int

    def folder(self, shard: int) -> RunFolder:
        return RunFolder(self.config_folder / f"shard-{shard}-of-{self.num_shards}")

    @property
    def merged(self) -> RunFolder:
        return RunFolder(self.config_folder / f"merged-{self.num_shards}-shards")

    def incomplete(self) -> list[int]:
        """The shards not (yet) COMPLETE: never started, failed or still running."""
        return [i for i in range(self.num_shards) if not self.folder(i).is_complete]

    def rerun_command(self, shard: int) -> str:
        """The command that (re)computes one shard into its folder, from the overrides its sweep gave the jobs."""
        overrides = next((f for f in self._overrides_files(shard) if f.exists()), None)
        unknown = ["<this config's overrides>", f"dataset.num_shards={self.num_shards}"]  # shards run without Hydra
        given = list(OmegaConf.load(overrides)) if overrides else unknown
        kept = [o for o in given if not o.startswith(("dataset.shard=", "hydra.run.dir=", "hydra.mode="))]
        run_dir = self.folder(shard).path.resolve()
        one_job = ["hydra.mode=RUN", f"hydra.run.dir={run_dir}"]  # even when an experiment preset sets MULTIRUN
        args = ["python", "-m", "pipeline.run", *kept, f"dataset.shard={shard}", *one_job]
        return " ".join(shlex.quote(a) for a in args)

    def _overrides_files(self, shard: int) -> list[Path]:
        others = [i for i in range(self.num_shards) if i != shard]
        return [self.folder(i).path / ".hydra" / "overrides.yaml" for i in (shard, *others)]


class IncompleteShards(RuntimeError):
    """A shard set cannot be merged yet: ``missing`` lists the shard indices that are not COMPLETE."""

    def __init__(self, shards: ShardSet, missing: list[int]):
        self.shards, self.missing = shards, missing
        commands = "\n".join(f"  shard {i}: {shards.rerun_command(i)}" for i in missing)
        super().__init__(
            f"{shards.config_folder}: shard(s) {', '.join(map(str, missing))} of {shards.num_shards} missing or "
            f"incomplete, so nothing is merged or published. Rerun each (a rerun resumes from its finished "
            f"batches), then merge with `python -m pipeline.merge {shards.config_folder}`:\n{commands}"
        )


def find_shard_sets(root: str | Path) -> list[ShardSet]:
    """Every shard set at or below ``root`` (a shard folder, a config folder or a sweep dir)."""
    root = Path(root)
    found = set()
    for path in (root, *root.rglob("shard-*-of-*")):
        match = SHARD_DIR.fullmatch(path.name)
        if match and path.is_dir():
            found.add(ShardSet(path.parent, int(match[2])))
    return sorted(found, key=lambda s: (str(s.config_folder), s.num_shards))


def merge(shards: ShardSet) -> RunFolder:
    """Build (or find) the merged folder of a complete shard set; raises ``IncompleteShards`` otherwise."""
    from pipeline.job import dataset_digest
    from pipeline.stages.report import summarize

    missing = shards.incomplete()
    if missing:
        raise IncompleteShards(shards, missing)
    parts = [shards.folder(i) for i in range(shards.num_shards)]
    manifests = [part.manifest for part in parts]
    configs = [OmegaConf.load(part.config_file) for part in parts]
    _check_parts(shards, manifests, configs)

    plan = {  # index in the unsharded batch plan -> (shard folder, index in that folder, sample ids)
        plan_index(k, shards.num_shards, i): (part, k, batch)
        for i, (part, manifest) in enumerate(zip(parts, manifests))
        for k, batch in enumerate(manifest["batches"])
    }
    if sorted(plan) != list(range(len(plan))):
        raise ValueError(f"{shards.config_folder}: the shards' batches do not tile one batch plan (gaps: "
                         f"{sorted(set(range(max(plan) + 1)) - set(plan))}); delete the shard folders and rerun")
    batches = [plan[index][2] for index in range(len(plan))]
    ids = [i for batch in batches for i in batch]
    config = _merged_config(configs[0], shards.num_shards)
    manifest = {k: v for k, v in manifests[0].items() if k != "run_key"} | {
        "sample_ids": ids,
        "batches": batches,
        "heatmap_ids": sorted(i for m in manifests for i in m["heatmap_ids"]),
        "dataset": manifests[0]["dataset"] | {"digest": dataset_digest(config.dataset, ids)},
        "shard_run_keys": [m["run_key"] for m in manifests],
    }
    merged = shards.merged
    previous = merged.start(manifest, OmegaConf.to_yaml(config))
    if previous["shard_run_keys"] != manifest["shard_run_keys"]:
        raise ValueError(f"{merged.path} merged other runs of these shards (recomputed since); delete it and merge again")
    _adopt_sweep_parent(shards, merged)
    if merged.is_complete:
        return merged

    for index, (part, k, _) in plan.items():
        atomic_write(merged.batch_file(index), lambda f, src=part.batch_file(k): f.write(src.read_bytes()))
    walls = [read_json(part.results / "metrics.json")["runtime/wall_seconds"] for part in parts]
    extra = {"runtime/wall_seconds": float(sum(walls)), "runtime/shard_wall_seconds_max": float(max(walls))}
    summarize(merged, manifests[0].get("classes"), extra=extra)
    merged.mark_complete()
    log.info("merged %d shards of %s into %s", shards.num_shards, shards.config_folder, merged.path)
    return merged


def _adopt_sweep_parent(shards: ShardSet, merged: RunFolder) -> None:
    """The merged run goes under the sweep parent run of the latest shard job (``pipeline.scaleout.sweep``), if any."""
    from pipeline.tracking.sweep_runs import PARENT_FILE

    records = [shards.folder(i).path / PARENT_FILE for i in range(shards.num_shards)]
    records = [r for r in records if r.exists()]
    if records:
        latest = max(records, key=lambda r: r.stat().st_mtime)
        atomic_write(merged.path / PARENT_FILE, lambda f: f.write(latest.read_bytes()))
    else:
        (merged.path / PARENT_FILE).unlink(missing_ok=True)


def _check_parts(shards: ShardSet, manifests: list[dict], configs: list[DictConfig]) -> None:
    """Refuse shards that belong to different configs or sit in the wrong folder."""
    hashes = {m["config_hash"] for m in manifests}
    if len(hashes) > 1:
        raise ValueError(f"{shards.config_folder}: the shard folders hold different configs ({sorted(hashes)}); "
                         "delete the shard folders of the stale config and merge again")
    for i, config in enumerate(configs):
        if (config.dataset.shard, config.dataset.num_shards) != (i, shards.num_shards):
            raise ValueError(f"{shards.folder(i).path} holds shard {config.dataset.shard} of "
                             f"{config.dataset.num_shards}, not shard {i} of {shards.num_shards}: it was moved or "
                             "copied by hand; rerun that shard with the command its config gives")
    commits = {m["git_commit"] for m in manifests}
    if len(commits) > 1:
        log.warning("%s: shards computed at different commits %s", shards.config_folder, sorted(commits))


def _merged_config(shard_config: DictConfig, num_shards: int) -> DictConfig:
    """A shard's config for the whole: ``dataset.shard=all``, and the tag ``shards=K`` (kept by a later publish)."""
    config = OmegaConf.create(OmegaConf.to_container(shard_config))
    config.dataset.shard = "all"
    config.tracking.tags = {**config.tracking.tags, SHARDS_TAG: str(num_shards)}
    return config


def publish_target(folder: RunFolder, uri: Optional[str] = None, experiment: Optional[str] = None) -> tuple[str, str, dict]:
    """Tracking URI, experiment and tags a folder publishes with: the given ones, else its config's."""
    from pipeline.tracking.store import resolve_tracking_uri

    tracking = OmegaConf.load(folder.config_file).tracking
    return uri or resolve_tracking_uri(tracking.uri), experiment or tracking.experiment, dict(tracking.tags)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.merge", description=__doc__.splitlines()[0])
    parser.add_argument("folder", help="a config folder (holding shard-<i>-of-<K>/ folders) or a whole sweep dir")
    parser.add_argument("--tracking-uri", help="default: the shards' tracking.uri, else MLFLOW_TRACKING_URI, else sqlite:///mlflow.db")
    parser.add_argument("--experiment", help="default: the shards' tracking.experiment")
    parser.add_argument("--no-publish", action="store_true", help="merge into the folder only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from pipeline.tracking.publishing import publish

    sets = find_shard_sets(args.folder)
    if not sets:
        parser.error(f"no shard-<i>-of-<K> folders at or below {args.folder}")
    incomplete = 0
    for shards in sets:
        try:
            merged = merge(shards)
        except IncompleteShards as error:
            print(error, file=sys.stderr)
            incomplete += 1
            continue
        if args.no_publish:
            print(f"merged {shards.num_shards} shards into {merged.path}")
            continue
        uri, experiment, tags = publish_target(merged, args.tracking_uri, args.experiment)
        run_id = publish(merged, uri, experiment, tags)
        print(f"merged {shards.num_shards} shards into {merged.path}; published to {uri}, experiment {experiment}: run {run_id}")
    return 1 if incomplete else 0


if __name__ == "__main__":
    sys.exit(main())
