"""Robustness, second round (docs/robustness.md): no silently wrong result, no raw traceback, nothing read or
written outside the folders the user named. Each test drives one case through the CLI or the public library."""
import json
import os

import pytest
import torch
from PIL import Image
from torch import nn

from slimzoo.cli import main
from slimzoo.errors import CheckpointError, ConfigError, DataError, OutputError


def _exit_2(argv, capsys) -> str:
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


# -- 1. silently wrong results ---------------------------------------------------------------------------------------
def test_resume_with_other_settings_is_refused_naming_them(tmp_path):
    from slimzoo.training import TrainConfig, fit

    state = tmp_path / "train_state.pt"
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    data = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(3)]

    class Stop(Exception):
        pass

    def stop(epoch, m):
        raise Stop  # interrupted after the first epoch's state was saved

    with pytest.raises(Stop):
        fit(model, data, nn.functional.cross_entropy, TrainConfig(epochs=3, lr=1e-3), state_path=state,
            progress=False, on_epoch_end=stop)
    assert state.is_file()
    with pytest.raises(ConfigError, match=r"lr: saved 0\.001, now 0\.01.*--restart"):
        fit(model, data, nn.functional.cross_entropy, TrainConfig(epochs=3, lr=1e-2), state_path=state,
            progress=False)
    with pytest.raises(ConfigError, match="data"):
        fit(model, data, nn.functional.cross_entropy, TrainConfig(epochs=3, lr=1e-3), state_path=state,
            progress=False, fingerprint={"data": "/other"})
    fit(model, data, nn.functional.cross_entropy, TrainConfig(epochs=3, lr=1e-3), state_path=state,
        progress=False)  # the same settings resume


def test_a_batch_larger_than_the_training_set_is_refused():
    from slimzoo.training import TrainConfig, fit

    with pytest.raises(ConfigError, match="fewer images than one batch"):
        fit(nn.Linear(2, 2), [], nn.functional.cross_entropy, TrainConfig(epochs=1, batch_size=4096), progress=False)


def test_synth_into_a_folder_holding_other_settings_is_refused(tmp_path, capsys):
    out = tmp_path / "d"
    args = ["data", "synth", "--out", out, "--num-train", "4", "--num-val", "2", "--size", "16"]
    assert main([str(a) for a in args]) == 0
    assert main([str(a) for a in args]) == 0  # the same settings: reused
    err = _exit_2(["data", "synth", "--out", out, "--num-train", "6", "--num-val", "2", "--size", "16"], capsys)
    assert "num_train: 4 there, 6 asked" in err


def _checkpoint(tmp_path, classes, name="ckpt", **extra):
    from slimzoo.checkpoint import save_checkpoint
    from slimzoo.models import create_model

    model = create_model("mobilenet_v1", num_classes=len(classes), width_mult=0.25)
    save_checkpoint(model, tmp_path / name, {"model": "mobilenet_v1", "num_classes": len(classes),
                                              "width_mult": 0.25, "classes": classes, **extra})
    return tmp_path / name


def test_checkpoint_of_other_classes_or_order_is_refused(synth_cls, tmp_path, capsys):
    classes = (synth_cls / "labels.txt").read_text().split()
    swapped = [classes[1], classes[0], *classes[2:]]
    err = _exit_2(["eval", "--checkpoint", _checkpoint(tmp_path, swapped), "--data", synth_cls, "--image-size", 32],
                  capsys)
    assert "another order" in err and repr(classes[1]) in err
    err = _exit_2(["eval", "--checkpoint", _checkpoint(tmp_path, classes[:-1], "fewer"), "--data", synth_cls,
                   "--image-size", 32], capsys)
    assert f"{len(classes) - 1} classes vs the dataset's {len(classes)}" in err


def test_non_finite_weights_are_refused_naming_the_tensor(synth_cls, tmp_path, capsys):
    from safetensors.torch import save_file

    from slimzoo.models import create_model

    sd = create_model("mobilenet_v1", num_classes=8, width_mult=0.25).state_dict()
    sd["fc.weight"][0, 0] = float("nan")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "w.safetensors"))
    for cmd in (["eval"], ["quant", "--out", tmp_path / "q.onnx"]):
        err = _exit_2([*cmd, "--model", "mobilenet_v1", "--width-mult", "0.25", "--weights", tmp_path / "w.safetensors",
                       "--data", synth_cls, "--image-size", 32], capsys)
        assert "NaN or Inf" in err and "fc.weight" in err
    assert not (tmp_path / "q.onnx").exists()


# -- 2. one line instead of a traceback ------------------------------------------------------------------------------
def test_output_path_that_is_a_folder_or_unwritable(tmp_path, capsys, monkeypatch):
    (tmp_path / "taken.onnx").mkdir()
    err = _exit_2(["export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--num-classes", 4,
                   "--image-size", 32, "--out", tmp_path / "taken.onnx"], capsys)
    assert "is a folder" in err
    (tmp_path / "file").write_text("x")
    err = _exit_2(["export", "--model", "mobilenet_v1", "--width-mult", "0.25", "--num-classes", 4,
                   "--image-size", 32, "--out", tmp_path / "file" / "m.onnx"], capsys)
    assert "cannot write here" in err

    import shutil
    from collections import namedtuple

    from slimzoo.storage import write_json

    def failing_write(tmp):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . PytorchStreamWriter failed writing file")
    full = namedtuple("usage", "total used free")(100 << 30, 100 << 30, 1 << 20)
    monkeypatch.setattr(shutil, "disk_usage", lambda p: full)
    from slimzoo.storage import atomic_write

    with pytest.raises(OutputError, match="disk is full"):
        atomic_write(tmp_path / "w.pt", failing_write)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".w.pt")] == []  # no temp file left
    write_json(tmp_path / "ok.json", {"a": 1})  # writes that succeed are unaffected


def test_checkpoint_config_of_wrong_types_or_absurd_sizes(tmp_path):
    from slimzoo.checkpoint import load_checkpoint

    ckpt = _checkpoint(tmp_path, ["a", "b"])
    cfg = json.loads((ckpt / "config.json").read_text())
    for bad in ({"num_classes": 10**9}, {"num_classes": "2"}, {"num_classes": True}, {"width_mult": -1},
                {"model": ["x"]}, {"classes": "ab"}):
        (ckpt / "config.json").write_text(json.dumps({**cfg, **bad}))
        with pytest.raises(CheckpointError, match=f"{list(bad)[0]}"):
            load_checkpoint(ckpt)
    (ckpt / "config.json").write_text("[" * 100_000)
    with pytest.raises(CheckpointError, match="nested too deeply"):
        load_checkpoint(ckpt)


def test_huge_images_are_refused_and_skippable(tmp_path, monkeypatch):
    from slimzoo.data import images
    from slimzoo.data.classification import ClassificationDataset, Sample

    for i in range(2):
        Image.new("RGB", (40 + 40 * i, 40)).save(tmp_path / f"{i}.png")
    monkeypatch.setattr(images, "MAX_PIXELS", 2000)  # 40x40 passes, 80x40 stands for a decompression bomb
    with pytest.raises(DataError, match=r"1\.png: image is 80x40 .* above the limit"):
        images.load_rgb(tmp_path / "1.png")
    images.load_rgb(tmp_path / "0.png")
    assert issubclass(DataError, Exception)  # --skip-bad-samples skips DataErrors: the bomb is skipped like others
    ds = ClassificationDataset([Sample(tmp_path / "0.png", 0), Sample(tmp_path / "1.png", 0)], ["a"])
    with pytest.raises(DataError):
        ds[1]


def test_malformed_results_json_given_to_report(tmp_path, capsys):
    for doc in ('{"rows": [{"id": "a"}]}', '[1, 2]', '{"rows": [{"id": "../x", "task": "t", "model": "m", '
                '"dataset": "d", "strategy": "none"}]}', "[" * 50_000, "not json"):
        (tmp_path / "results.json").write_text(doc)
        err = _exit_2(["report", "--zoo", tmp_path], capsys)
        assert "results.json" in err
    assert not (tmp_path / "report.html").exists()


# -- 3. nothing read or written outside the named folders -----------------------------------------------------------
def _recipes(tmp_path, row_id="cls-a-none", extra=""):
    import shutil

    from slimzoo.zoo import RECIPES_DIR

    d = tmp_path / "recipes"
    d.mkdir()
    shutil.copy(RECIPES_DIR / "profiles.yaml", d / "profiles.yaml")
    (d / "a.yaml").write_text(f"id: {row_id}\ntask: classification\nmodel: mobilenet_v1\ndataset: synth-cls\n"
                              f"strategy: none\n{extra}")
    return d


@pytest.mark.parametrize("row_id,extra", [("../../escape", ""), ("a/b", ""),
                                          ("cls-a-none", "profiles:\n  default:\n    id: ../escape\n")])
def test_recipe_ids_cannot_climb_out_of_the_output_folder(tmp_path, capsys, row_id, extra):
    recipes = _recipes(tmp_path, json.dumps(row_id), extra)
    err = _exit_2(["zoo", "--out", tmp_path / "zoo", "--recipes", recipes], capsys)
    assert "id" in err
    assert not (tmp_path / "escape").exists() and not (tmp_path / "zoo" / "rows").exists()


def test_yaml_bombs_and_deep_nesting_are_refused(tmp_path):
    from slimzoo.config import safe_yaml

    laughs = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    with pytest.raises(ConfigError, match="aliases"):
        safe_yaml(laughs, "bomb.yaml")
    with pytest.raises(ConfigError, match="bomb.yaml"):
        safe_yaml("[" * 100_000, "bomb.yaml")
    with pytest.raises(ConfigError, match="limit"):
        safe_yaml("a: " + "x" * (2 << 20), "big.yaml")
    assert safe_yaml("a: &x 1\nb: *x\n", "ok.yaml") == {"a": 1, "b": 1}  # a few aliases are fine


def test_list_entries_that_climb_out_of_the_root_are_refused(tmp_path):
    from slimzoo.data.classification import parse_list_file
    from slimzoo.data.segmentation import load_segmentation

    (tmp_path / "train_list.txt").write_text("a.jpg 0\n../../etc/passwd 1\n")
    with pytest.raises(DataError, match=r"train_list.txt:2: path '\.\./\.\./etc/passwd' climbs out"):
        parse_list_file(tmp_path / "train_list.txt", tmp_path, 2)
    (tmp_path / "train_list.txt").write_text(f"a.jpg 0\n{tmp_path}/b.jpg 1\n")
    with pytest.raises(DataError, match="absolute path"):
        parse_list_file(tmp_path / "train_list.txt", tmp_path, 2)
    (tmp_path / "train_list.txt").write_text(f"{tmp_path}/a.jpg 0\n{tmp_path}/b.jpg 1\n")  # all absolute: accepted
    assert [s.path for s in parse_list_file(tmp_path / "train_list.txt", tmp_path, 2)] == [tmp_path / "a.jpg",
                                                                                          tmp_path / "b.jpg"]
    (tmp_path / "labels.txt").write_text("bg\nfg\n")
    (tmp_path / "val_list.txt").write_text("images/a.png ../labels/a.png\n")
    with pytest.raises(DataError, match="val_list.txt:1"):
        load_segmentation(tmp_path, "val", "paddleseg")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_special_files_are_not_opened_as_images(tmp_path):
    from slimzoo.data.images import load_rgb

    os.mkfifo(tmp_path / "x.jpg")  # opening it would block forever
    with pytest.raises(DataError, match="not a regular file"):
        load_rgb(tmp_path / "x.jpg")
    (tmp_path / "d.jpg").mkdir()
    with pytest.raises(DataError, match="not a regular file"):
        load_rgb(tmp_path / "d.jpg")


# -- 4. messages that say what happened --------------------------------------------------------------------------------
def test_runtime_errors_keep_their_whole_message_on_one_line():
    from slimzoo.runtime import one_line

    e = RuntimeError("Exception from src/inference/src/cpp/core.cpp:99:\nCheck 'x' failed at op Conv_3:\n"
                     "input rank 3 != 4\n")
    msg = one_line(e)
    assert "\n" not in msg and "Conv_3" in msg and "rank 3 != 4" in msg


def test_interrupted_synth_says_it_starts_again(monkeypatch, tmp_path, capsys):
    import slimzoo.data.synth_cls as synth

    def interrupted(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(synth, "write_synth_cls", interrupted)
    assert main(["data", "synth", "--out", str(tmp_path / "d")]) == 130
    assert "write it again from the start" in capsys.readouterr().err
