"""Bad config values and inputs on the command line: exit code 2 and a last line that names the key and the fix.

The cases run `python -m pipeline.run`'s entry in this process (sys.argv patched), which is what the command does
after its imports; one case runs the real command to check the exit code and that Hydra's hint is not the last line.
"""
import subprocess
import sys

import pytest
import torch

from pipeline.cli import USAGE_ERROR, run_cli
from pipeline.run import main
from pipeline.stages.results import RunFolder

QUICK = ["tracking.publish=false", "dataset.limit=2", "batch_size=2", "heatmaps=1"]


def refused(monkeypatch, capsys, tmp_path, *overrides, flags=()) -> str:
    """Run the pipeline with ``overrides`` in ``tmp_path``; it must exit 2. Returns the last line on stderr."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["pipeline.run", *flags, *QUICK, *overrides])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    assert exit_info.value.code == USAGE_ERROR
    lines = capsys.readouterr().err.strip().splitlines()
    return lines[-1]


@pytest.mark.parametrize("overrides, message", [
    (["dataset.num_shards=0"], "error: dataset.num_shards=0 must be >= 1 (1: no sharding)"),
    (["heatmaps=-1"], "error: heatmaps=-1 must be >= 0"),
    (["evaluation.steps=0"], "error: evaluation.steps=0 must be >= 1"),
    (["device=foo"], "error: device=foo is not a device: use device=auto"),
    (["device=cuda:7"], "error: device=cuda:7: this machine has"),
    (["method=nosuch"], "error: method=nosuch is not an option of method; available: deeplift, deeplift_shap, "
                        "expected_gradients, grad_cam, grad_cam_plus_plus, gradient, gradient_shap, input_x_gradient, "
                        "integrated_gradients, kernel_shap, layer_cam, lime, lrp, occlusion, pattern_attribution, pattern_net, "
                        "score_cam, smoothgrad"),
    (["method=lime", "method.features=nosuch"], "error: method.features=nosuch is unknown; available: slic, grid"),
    (["dataset.root=x"], "error: dataset.root is not a config key; dataset takes: input_high, input_low, kind,"),
    (["batch_size=abc"], "error: batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
    (["+nokey=1"], "error: unknown config key(s) nokey; valid keys here: batch_size,"),
])
def test_bad_values_end_in_one_line_that_names_the_key(monkeypatch, capsys, tmp_path, overrides, message):
    assert refused(monkeypatch, capsys, tmp_path, *overrides).startswith(message)


def test_cuda_without_cuda_names_auto(monkeypatch, capsys, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert refused(monkeypatch, capsys, tmp_path, "device=cuda") == (
        "error: device=cuda: this machine has no CUDA device (available: cpu); use device=auto to take CUDA only "
        "when present")


def test_an_unwritable_output_root_names_the_key(monkeypatch, capsys, tmp_path):
    (tmp_path / "a_file").write_text("")
    last = refused(monkeypatch, capsys, tmp_path, f"output_root={tmp_path / 'a_file' / 'out'}")
    assert last.startswith(f"error: output_root={tmp_path / 'a_file' / 'out'} is not a folder this process can "
                           "write in (Not a directory): set output_root to a writable folder")


def test_an_image_folder_without_one_readable_image_says_so_and_is_not_complete(monkeypatch, capsys, tmp_path):
    for name in ("a/1.png", "b/2.png"):
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "images" / name).write_text("not a png")
    last = refused(monkeypatch, capsys, tmp_path, "dataset=image_folder", f"dataset.path={tmp_path / 'images'}",
                   "output_root=out")
    assert last.startswith(f"error: no readable images: all 2 selected image(s) of dataset.path={tmp_path / 'images'}"
                           " were skipped as unreadable")
    (manifest,) = (tmp_path / "out").rglob("manifest.json")
    assert not RunFolder(manifest.parent).is_complete  # nothing that looks finished


def custom_model_args(tmp_path, checkpoint) -> list[str]:
    return ["model=custom", "model.module._target_=torch.nn.Sequential", f"model.checkpoint={checkpoint}",
            "method=gradient", "output_root=out"]


def test_an_empty_checkpoint_says_it_is_empty(monkeypatch, capsys, tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    last = refused(monkeypatch, capsys, tmp_path, *custom_model_args(tmp_path, tmp_path / "empty.pt"))
    assert last.startswith(f"error: model.checkpoint={tmp_path / 'empty.pt'} is an empty file (0 bytes)")


def test_a_checkpoint_of_another_architecture_leads_with_one_line(monkeypatch, capsys, tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18(num_classes=10).state_dict(), tmp_path / "net.pt")
    last = refused(monkeypatch, capsys, tmp_path, "model=torchvision", "model.arch=resnet18", "model.num_classes=5",
                   f"model.checkpoint={tmp_path / 'net.pt'}", "output_root=out")
    assert last.startswith(f"error: model.checkpoint={tmp_path / 'net.pt'} does not fit the model ResNet: keys 2 of "
                           "another shape (checkpoint vs model; first: fc.weight (10, 512) vs (5, 512), fc.bias")
    assert last.endswith("Is it for another architecture or number of classes (model.arch, model.num_classes)?")


def test_rgb_images_into_the_grey_digits_model_name_grayscale(monkeypatch, capsys, tmp_path):
    from PIL import Image

    for name in ("a/1.png", "b/2.png"):
        (tmp_path / "images" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "images" / name)
    last = refused(monkeypatch, capsys, tmp_path, "dataset=image_folder", f"dataset.path={tmp_path / 'images'}",
                   "method=gradient", "output_root=out")
    assert last.startswith("error: dataset=image_folder does not fit model=digits_cnn: input has 3 channels")
    assert "torchvision.transforms.Grayscale" in last


def test_the_command_exits_2_and_its_last_line_is_the_problem(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pipeline.run", "method=nosuch"], cwd=tmp_path, capture_output=True,
                          text=True, env={k: v for k, v in __import__("os").environ.items() if k != "HYDRA_FULL_ERROR"})
    assert done.returncode == USAGE_ERROR
    assert done.stderr.strip().splitlines()[-1].startswith("error: method=nosuch is not an option of method")
    assert "HYDRA_FULL_ERROR" not in done.stderr


@pytest.mark.parametrize("key, value", [
    ("tracking.experiment", "../../../../escaped"), ("tracking.experiment", ""), ("method.name", "../../.."),
    ("composite.name", "..."), ("model.name", "a/b"), ("dataset.name", ".."),
])
@pytest.mark.parametrize("mode", [[], ["--multirun"]], ids=["run", "multirun"])
def test_a_value_that_would_name_a_folder_outside_output_root_is_refused_before_anything_is_written(
        monkeypatch, capsys, tmp_path, key, value, mode):
    work = tmp_path / "work"
    work.mkdir()
    last = refused(monkeypatch, capsys, work, f"{key}={value}", "output_root=out", flags=mode)
    assert last.startswith(f"error: {key}={value!r} cannot name a folder: use letters, digits and - _ . only")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    if not mode:
        assert written == [], f"nothing may be written before the refusal, found {written}"
    # a sweep records itself (sweep folder, parent run in the store and its lock) before its first job resolves
    # its folder
    outside = [p for p in written if not p.is_relative_to(work / "out") and p.name not in ("mlflow.db",
                                                                                            "mlflow.db.lock")]
    assert outside == [], f"written outside output_root: {outside}"
