"""The README's "Bring your own model" commands and Python code, run as written."""
import os
import re
import shlex
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def _blocks(lang: str) -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Bring your own model", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


@pytest.fixture
def in_tmp(tmp_path):
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


@pytest.mark.slow
def test_readme_byom_commands_and_python_run_as_written(in_tmp):
    import warnings

    from slimzoo.cli import main

    (bash,) = _blocks("bash")
    commands = [c for c in bash.replace("\\\n", " ").splitlines() if c.strip()]
    assert len(commands) == 5
    for command in commands:
        argv = shlex.split(command)
        assert argv[0] == "slimzoo"
        assert main(argv[1:]) in (0, None), command
    assert (in_tmp / "byom/mnv3_int8.onnx").is_file() and (in_tmp / "byom/resnet18_int8.onnx").is_file()
    assert (in_tmp / "byom/regnet_pruned/config.json").is_file()
    (python,) = _blocks("python")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(python, "README.md (Bring your own model)", "exec"), {})
    assert (in_tmp / "byom/api_int8.onnx").is_file() and (in_tmp / "byom/qat_int8.onnx").is_file()


def test_import_slimzoo_is_light_and_exposes_the_facade():
    import subprocess
    import sys

    code = ("import sys, slimzoo; assert 'torch' not in sys.modules and 'onnxruntime' not in sys.modules; "
            "slimzoo.quantize, slimzoo.prune, slimzoo.prepare_qat, slimzoo.convert; "
            "assert callable(slimzoo.prune) and slimzoo.prune.PruneConfig")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_configs_validate_themselves_however_built():
    from slimzoo import PruneConfig, PTQConfig
    from slimzoo.errors import ConfigError

    for bad in ({"num_calibration": 0}, {"calibration": "best"}, {"percentile": 20}, {"keep_fp32": "conv1"}):
        with pytest.raises(ConfigError):
            PTQConfig(**bad)
    for bad in ({"flops_reduction": 1.5}, {"method": "random"}, {"round_to": 0}, {"ignored": "fc"}):
        with pytest.raises(ConfigError):
            PruneConfig(**bad)


def test_task_detection_and_quantization_through_the_public_api(tmp_path):
    import torch
    from torch import nn

    import slimzoo
    from slimzoo.data.synth_cls import write_synth_cls
    from slimzoo.tasks import get_task, task_of_folder

    root = write_synth_cls(tmp_path / "d", num_train=16, num_val=8, size=32, progress=False)
    assert task_of_folder(root) == "classification"
    task = get_task("classification", data_root=root, image_size=32)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, task.num_classes)).eval()
    loader = task.train_loader(8)
    res = slimzoo.quantize(model, loader, slimzoo.PTQConfig(num_calibration=8), transform_fn=lambda b: b[0],
                           out=tmp_path / "q.onnx", check=False)
    (tmp_path / "copy").mkdir()
    assert res.path.is_file() and res.save(tmp_path / "copy").name == "q.onnx"  # into a folder: same name
    from slimzoo.runtime import OnnxPredictor

    res2 = slimzoo.quantize_with_accuracy_control(
        model, loader, lambda p: task.evaluate(OnnxPredictor(p))["top1"], 100.0,
        slimzoo.PTQConfig(num_calibration=8), transform_fn=lambda b: b[0], out=tmp_path / "aa.onnx")
    assert res2.path.is_file() and res2.kept_fp32 == [] and res2.metric is not None
    assert torch.is_tensor(next(iter(loader))[0])


def test_sensitivity_file_of_other_weights_is_refused(tmp_path):
    import torch

    from slimzoo.errors import ConfigError
    from slimzoo.prune import SensitivityConfig, analyze_sensitivity
    from slimzoo.prune.sensitivity import finished_analysis

    def make(seed):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.Conv2d(16, 4, 1)).eval()

    m = make(0)
    path = tmp_path / "s.json"
    analyze_sensitivity(m, torch.randn(1, 3, 8, 8), lambda _: 1.0, path, SensitivityConfig(ratios=(0.5,)),
                        progress=False)
    assert finished_analysis(path, m)["config"]["ratios"] == [0.5]
    with pytest.raises(ConfigError, match="other weights"):
        finished_analysis(path, make(1))
