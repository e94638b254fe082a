"""Entry point: ``python -m pipeline.run method=lrp composite=epsilon_gamma_box`` (Hydra app, configs in ``conf/``).

The output folder is Hydra's run dir, ``outputs/<experiment>/<model>-<dataset>/<method>-<composite>/<config hash>-
<inputs digest>``: the same config on the same checkpoint, data and code always lands in the same folder, which is
what makes a rerun resume. A bad config value or input ends in one ``error: ...`` line and exit code 2.
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import CONF_DIR


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from pipeline.job import run_job  # heavy imports (torch, mlflow) only once the config is valid

    run_job(cfg, HydraConfig.get().runtime.output_dir)


if __name__ == "__main__":
    from pipeline.cli import run_cli

    run_cli(main)
