"""A rerun reuses a folder only when nothing that decides its results changed: config, checkpoint, data files, code."""
import json
import logging
import os

import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict
from PIL import Image

from pipeline.bundled import digits_split
from pipeline.config import CONF_DIR, config_hash
from pipeline.job import run_job
from pipeline.tracking.identity import BUNDLED_CHECKPOINT, code_version, data_digest

SMALL = ["method=gradient", "dataset.limit=8", "batch_size=8", "heatmaps=0", "tracking.publish=false",
         "evaluation.features_in_step=128"]


def make_cfg(tmp_path, overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*SMALL, f"output_root={tmp_path / 'out'}", *overrides],
                       return_hydra_config=True)


def run(tmp_path, overrides):
    """``python -m pipeline.run <overrides>`` in-process: the folder Hydra would choose, the job config without hydra."""
    cfg = make_cfg(tmp_path, overrides)
    folder = cfg.hydra.run.dir
    with open_dict(cfg):
        del cfg["hydra"]
    return run_job(cfg, folder)


def metrics(folder):
    return json.loads((folder.results / "metrics.json").read_text())


def test_an_overwritten_checkpoint_computes_afresh_in_a_new_folder_and_says_why(tmp_path, caplog):
    checkpoint = tmp_path / "net.pt"
    checkpoint.write_bytes(BUNDLED_CHECKPOINT.read_bytes())
    custom = ["model=custom", "model.module._target_=pipeline.bundled.DigitsCNN", f"model.checkpoint={checkpoint}"]
    first = run(tmp_path, custom)
    again = run(tmp_path, custom)
    assert again.path == first.path  # unchanged: the same folder, reused

    state = torch.load(checkpoint, weights_only=True)
    torch.save({k: v * 0.5 if v.is_floating_point() else v for k, v in state.items()}, checkpoint)
    with caplog.at_level(logging.INFO, logger="pipeline.job"):
        changed = run(tmp_path, custom)
    assert changed.path != first.path and changed.path.parent == first.path.parent
    assert changed.manifest["config_hash"] == first.manifest["config_hash"]  # the config is the same ...
    assert changed.manifest["inputs"]["checkpoint_sha256"] != first.manifest["inputs"]["checkpoint_sha256"]
    assert metrics(changed)["faithfulness/srg"] != metrics(first)["faithfulness/srg"]  # ... the results are not
    (why,) = [r.message for r in caplog.records if "computing afresh" in r.message]
    assert "model.checkpoint changed" in why and str(first.path) in why


def test_a_changed_image_changes_the_data_digest_and_the_folder(tmp_path):
    images, labels = digits_split("test")
    root = tmp_path / "images"
    for i in range(4):
        (root / str(int(labels[i]))).mkdir(parents=True, exist_ok=True)
        Image.fromarray((images[i, 0].numpy() * 255).astype("uint8")).save(root / str(int(labels[i])) / f"{i}.png")
    cfg = make_cfg(tmp_path, ["dataset=image_folder", f"dataset.path={root}"])
    before = data_digest(cfg.dataset)
    first_dir = cfg.hydra.run.dir
    image = next(root.rglob("*.png"))
    Image.fromarray((images[10, 0].numpy() * 255).astype("uint8")).save(image)
    os.utime(image, ns=(1, 1))  # a new mtime even on coarse-clock filesystems
    cfg = make_cfg(tmp_path, ["dataset=image_folder", f"dataset.path={root}"])
    assert data_digest(cfg.dataset) != before and cfg.hydra.run.dir != first_dir
    assert config_hash(cfg) in cfg.hydra.run.dir  # the config part of the name stays


def test_the_code_version_is_the_commit_and_marks_uncommitted_changes():
    version = code_version()
    assert len(version.split("+")[0]) == 40 or version.startswith("xai-pipeline ")
