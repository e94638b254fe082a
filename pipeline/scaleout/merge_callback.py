"""Merge the shards of a multirun when it ends (a Hydra callback, registered in ``conf/config.yaml``).

``on_multirun_start`` gives the multirun an id; the callback object travels to the jobs with Hydra's
context (joblib, submitit and Ray workers), where ``on_job_start`` marks each shard folder with that id.
``on_multirun_end`` then merges and publishes every shard set this multirun touched (``pipeline.merge``),
including shards finished by earlier multiruns, and names the missing shards of a set it cannot merge.
Hydra skips ``on_multirun_end`` when a job fails; the same merge then runs at exit instead, so the
complete sets are still published and the failed shards are named with the command that reruns each.
"""
import atexit
import logging
import uuid
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)

#: In a shard folder: the id of the last multirun that ran the shard.
MULTIRUN_MARK = "multirun_id"


class MergeShards(Callback):
    """See the module docstring."""

    def __init__(self) -> None:
        self.multirun_id: Optional[str] = None
        self._merged = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.multirun_id = uuid.uuid4().hex
        atexit.register(self._merge, str(config.hydra.sweep.dir))  # a failed job skips on_multirun_end

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if self.multirun_id and config.dataset.num_shards > 1:
            (Path(str(config.hydra.runtime.output_dir)) / MULTIRUN_MARK).write_text(self.multirun_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        incomplete = self._merge(str(config.hydra.sweep.dir))
        if incomplete:  # Hydra turns this into a warning; the error log above names the shards and commands
            raise incomplete[0] if len(incomplete) == 1 else RuntimeError("\n".join(map(str, incomplete)))

    def _merge(self, sweep_dir: str) -> list[Exception]:
        """Merge and publish each complete shard set this multirun touched; log (and return) the incomplete ones."""
        if self._merged:
            return []
        self._merged = True
        from pipeline.job import publish_or_explain
        from pipeline.merge import IncompleteShards, find_shard_sets, merge, publish_target

        incomplete = []
        for shards in find_shard_sets(sweep_dir):
            if not self._touched(shards):
                continue
            try:
                merged = merge(shards)
            except IncompleteShards as error:
                log.error("%s", error)
                incomplete.append(error)
                continue
            if OmegaConf.load(merged.config_file).tracking.publish:
                publish_or_explain(merged, *publish_target(merged))
        return incomplete

    def _touched(self, shards) -> bool:
        marks = (shards.folder(i).path / MULTIRUN_MARK for i in range(shards.num_shards))
        return any(mark.exists() and mark.read_text() == self.multirun_id for mark in marks)
