"""Entry point: ``python -m pipeline.run method=lrp composite=epsilon_gamma_box`` (Hydra app, configs in ``conf/``).

The output folder is Hydra's run dir, ``outputs/<experiment>/<model>-<dataset>/<method>-<composite>/<config hash>-
<inputs digest>``: the same config on the same checkpoint, data and code always lands in the same folder, which is
what makes a rerun resume. A bad config value or input ends in one ``error: ...`` line and exit code 2.

``main`` returns the run's SRG: the objective a ``hydra/sweeper=optuna`` multirun maximises (``experiment=tune_lrp``).
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from pipeline.config import CONF_DIR

#: The metric ``main`` returns (from the run's ``results/metrics.json``): what an optuna sweep optimises.
OBJECTIVE = "faithfulness/srg"


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    from pipeline.job import run_job  # heavy imports (torch, mlflow) only once the config is valid
    from pipeline.stages.results import read_json

    folder = run_job(cfg, HydraConfig.get().runtime.output_dir)
    return float(read_json(folder.results / "metrics.json")[OBJECTIVE])


if __name__ == "__main__":
    from pipeline.cli import run_cli

    run_cli(main)
