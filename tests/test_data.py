import hashlib

import pytest
import torch

from slimzoo.data import classification as cls_data
from slimzoo.data.synth_cls import SHAPES, write_synth_cls
from slimzoo.errors import DataError


def _digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_synth_is_deterministic(tmp_path):
    a = write_synth_cls(tmp_path / "a", num_train=12, num_val=6, size=32, seed=3, progress=False)
    b = write_synth_cls(tmp_path / "b", num_train=12, num_val=6, size=32, seed=3, progress=False)
    c = write_synth_cls(tmp_path / "c", num_train=12, num_val=6, size=32, seed=4, progress=False)
    assert _digest(a) == _digest(b)
    assert _digest(a) != _digest(c)


def test_list_format_round_trip(synth_cls):
    ds = cls_data.load_split(synth_cls, "train", cls_data.eval_transform(32))
    assert ds.classes == list(SHAPES)
    assert len(ds) == 96
    lines = (synth_cls / "train_list.txt").read_text().split("\n")
    _, label = lines[5].split()
    img, y = ds[5]
    assert y == int(label) and img.shape == (3, 32, 32) and img.dtype == torch.float32
    assert len({s.label for s in ds.samples}) > 5  # several classes present


def test_folder_format(tmp_path, synth_cls):
    import shutil

    root = tmp_path / "folders"
    for split in ("train", "val"):
        for line in (synth_cls / f"{split}_list.txt").read_text().splitlines()[:20]:
            rel, label = line.split()
            dst = root / split / SHAPES[int(label)]
            dst.mkdir(parents=True, exist_ok=True)
            shutil.copy(synth_cls / rel, dst)
    assert cls_data.detect_format(root) == "folder"
    train = cls_data.load_split(root, "train")
    val = cls_data.load_split(root, "val")
    assert val.classes == train.classes
    for s in val.samples:
        assert s.path.parent.name == val.classes[s.label]


@pytest.mark.parametrize("line,msg", [("a.jpg", "expected 'relative/path label_id'"),
                                      ("a.jpg x", "not an integer"), ("a.jpg 99", "out of range")])
def test_bad_list_lines_name_file_and_line(tmp_path, line, msg):
    (tmp_path / "labels.txt").write_text("a\nb\n")
    (tmp_path / "val_list.txt").write_text(f"ok.jpg 0\n{line}\n")
    with pytest.raises(DataError, match=msg) as e:
        cls_data.load_split(tmp_path, "val")
    assert "val_list.txt:2" in str(e.value)


def test_corrupt_image_names_the_file(tmp_path):
    (tmp_path / "labels.txt").write_text("a\n")
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8not a jpeg")
    (tmp_path / "val_list.txt").write_text("bad.jpg 0\n")
    ds = cls_data.load_split(tmp_path, "val")
    with pytest.raises(DataError, match="bad.jpg: cannot decode"):
        ds[0]
