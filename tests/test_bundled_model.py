"""The bundled default: accurate enough to explain, loaded safely, and self-contained."""
import json
import subprocess
import sys
from pathlib import Path

import torch

import pipeline.bundled as bundled
from pipeline.bundled import WEIGHTS, DigitsCNN, digits_split, load_default_model

REPO = Path(__file__).resolve().parents[1]


def test_held_out_accuracy_is_at_least_95_percent(digits_model):
    images, labels = digits_split("test")
    with torch.no_grad():
        accuracy = (digits_model(images).argmax(dim=1) == labels).float().mean().item()
    assert accuracy >= 0.95, f"held-out accuracy {accuracy:.3f}"


def test_train_and_test_splits_are_disjoint_and_deterministic():
    train, _ = digits_split("train")
    test, test_labels = digits_split("test")
    assert len(train) + len(test) == 1797 and len(test) == 360
    assert not (train.flatten(1)[:, None] == test.flatten(1)[None]).all(dim=2).any()  # no image in both
    again, again_labels = digits_split("test")
    assert torch.equal(test, again) and torch.equal(test_labels, again_labels)
    assert test.shape[1:] == (1, 32, 32) and 0.0 <= test.min() and test.max() <= 1.0


def test_weights_load_with_weights_only(monkeypatch):
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    assert set(state) == set(DigitsCNN().state_dict())
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(bundled.torch, "load", recording_load)
    model = load_default_model()
    assert calls == [True]
    assert not model.training


PROBE = """
import json, sys
opened = []
def record(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.append(args[0])
sys.addaudithook(record)
from pipeline.bundled import digits_split, load_default_model
load_default_model()
digits_split("train")
print(json.dumps(opened))
"""


def test_no_file_outside_the_repo_or_installed_packages_is_read():
    """No download, no cache in the home directory: every file opened lies in the repo, the venv or Python."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True, check=True, timeout=300
    )
    opened = {str(Path(p).resolve()) for p in json.loads(result.stdout.strip().splitlines()[-1])}
    system = ["/dev/", "/proc/", "/sys/", "/usr/share/zoneinfo/", "/etc/localtime"]  # OS facts, not data
    allowed = [str(REPO), sys.prefix, sys.base_prefix, *system]
    outside = sorted(p for p in opened if not any(p.startswith(root) for root in allowed))
    assert not outside, f"files read outside the repo and installed packages: {outside[:10]}"
    assert str(WEIGHTS.resolve()) in opened  # the probe does see the reads
    assert any(p.endswith("sklearn/datasets/data/digits.csv.gz") for p in opened)
