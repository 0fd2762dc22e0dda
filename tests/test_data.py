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


def test_wider_synth_val_split_starts_with_the_smaller_one(tmp_path):
    """benchmarks/_heldout.py widens the zoo's validation split: its first images must be the zoo's own."""
    small = write_synth_cls(tmp_path / "s", num_train=2, num_val=4, size=32, seed=3, progress=False)
    wide = write_synth_cls(tmp_path / "w", num_train=1, num_val=7, size=32, seed=3, progress=False)
    small_lines = (small / "val_list.txt").read_text().splitlines()
    wide_lines = (wide / "val_list.txt").read_text().splitlines()
    assert len(wide_lines) == 7 and wide_lines[:4] == small_lines
    for line in small_lines:
        rel = line.split()[0]
        assert (small / rel).read_bytes() == (wide / rel).read_bytes()


def test_calibration_draws_are_disjoint_subsets_of_one_size(synth_cls):
    from slimzoo.tasks import get_task

    task = get_task("classification", data_root=synth_cls, image_size=32, batch_size=16, num_workers=0)
    a = torch.cat(list(task.calibration_batches(24, 8)))
    b = torch.cat(list(task.calibration_batches(24, 8, offset=1)))
    assert a.shape == b.shape == (24, 3, 32, 32)
    assert torch.equal(a, torch.cat(list(task.calibration_batches(24, 8))))  # offset 0: the zoo's images
    assert not any(torch.equal(x, y) for x in a for y in b)  # another draw: none of the same images


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
