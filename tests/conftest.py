"""Shared fixtures: the bundled digits model and data, and a random-weight torchvision ResNet18.

Models are session-scoped and must not be modified by tests; take ``copy.deepcopy`` (or ``.double()``
on a copy) before changing one. ``float64`` variants exist for comparisons against reference
implementations, where float32 rounding would hide real differences.
"""
import copy
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.bundled import digits_split, load_default_model

RESNET_SEED = 0
RESNET_INPUT_SHAPE = (2, 3, 64, 64)


def randomise_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters, as a trained model has.

    With the defaults (mean 0, var 1, weight 1, bias 0) BatchNorm in eval mode is the identity, and a
    method that mishandles it (e.g. LRP merging it into the layer before) would still pass.
    """
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            c = module.num_features
            module.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + torch.rand(c, generator=generator))
            module.weight.data.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.data.copy_(0.1 * torch.randn(c, generator=generator))
    return model


def random_resnet18(seed: int = RESNET_SEED) -> nn.Module:
    """torchvision ResNet18 (no download: ``weights=None``), seeded weights and BatchNorm statistics, eval mode."""
    from torchvision.models import resnet18

    with torch.random.fork_rng():  # seeded init without disturbing the tests' global RNG
        torch.manual_seed(seed)
        model = resnet18(weights=None)
    with torch.no_grad():
        randomise_batchnorm(model, torch.Generator().manual_seed(seed))
    return model.eval()


@pytest.fixture(scope="session")
def digits_model() -> nn.Module:
    """The bundled trained DigitsCNN in eval mode (float32)."""
    return load_default_model()


@pytest.fixture(scope="session")
def digits_model_f64(digits_model) -> nn.Module:
    """The bundled model in float64, for comparisons against Captum/Zennit/Quantus."""
    return copy.deepcopy(digits_model).double()


@pytest.fixture(scope="session")
def digits_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Six held-out digits (6, 1, 32, 32) in [0, 1] and their labels."""
    images, labels = digits_split("test")
    return images[:6].clone(), labels[:6].clone()


@pytest.fixture(scope="session")
def resnet18_model() -> nn.Module:
    """A seeded random-weight ResNet18 (1000 classes) with randomised BatchNorm, eval mode, float32."""
    return random_resnet18()


@pytest.fixture(scope="session")
def resnet18_model_f64(resnet18_model) -> nn.Module:
    """The random ResNet18 in float64."""
    return copy.deepcopy(resnet18_model).double()


@pytest.fixture(scope="session")
def resnet_input() -> torch.Tensor:
    """A small seeded input for ResNet18, shape (2, 3, 64, 64), standard normal like normalised images."""
    return torch.randn(RESNET_INPUT_SHAPE, generator=torch.Generator().manual_seed(RESNET_SEED))


@pytest.fixture(scope="module")
def database(tmp_path_factory, request):
    """One SQLite tracking file per test module (creating MLflow's tables takes seconds)."""
    return f"sqlite:///{tmp_path_factory.mktemp(request.module.__name__.split('.')[-1]) / 'mlflow.db'}"


@pytest.fixture
def tracking(database, request):
    """(tracking uri, client, experiment id, experiment name): each test its own experiment in the module's store."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=database)
    experiment = request.node.name
    return database, client, client.create_experiment(experiment), experiment


MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def compose_config(overrides=()):
    """The pipeline's config for ``overrides``, as ``python -m pipeline.run`` composes it."""
    from hydra import compose, initialize_config_dir

    from pipeline.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """A real ``mlflow server`` (SQLite backend, proxied artifacts, loopback only) for the whole session."""
    root = tmp_path_factory.mktemp("mlflow_server")
    port = free_port()
    process = subprocess.Popen(
        [MLFLOW, "server", "--backend-store-uri", f"sqlite:///{root / 'server.db'}", "--serve-artifacts",
         "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=open(root / "server.log", "w"), start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
