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
