"""No lost work and opt-in skipping: real subprocesses killed with SIGKILL at a random point resume to the same
result as an uninterrupted run; bad samples are skipped and counted only when asked."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

from slimzoo.errors import DataError
from slimzoo.tasks import get_task

SLIMZOO = [sys.executable, "-m", "slimzoo.cli"]


def _run(args, **kw):
    return subprocess.run(SLIMZOO + args, capture_output=True, text=True, timeout=600, **kw)


def _kill_when(args, ready, rng: random.Random, extra_delay: float = 1.5):
    """Start ``slimzoo args``, wait until ``ready()`` (some work finished), then a random extra delay, SIGKILL."""
    proc = subprocess.Popen(SLIMZOO + args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    t0 = time.time()
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"process ended (rc {proc.returncode}) before it could be killed: {args}")
        if time.time() - t0 > 300:
            proc.kill()
            pytest.fail("nothing finished within 300 s")
        time.sleep(0.05)
    time.sleep(rng.uniform(0, extra_delay))
    killed = proc.poll() is None
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return killed


@pytest.fixture(scope="module")
def rng():
    seed = int(os.environ.get("SLIMZOO_KILL_SEED", random.randrange(1 << 30)))
    print(f"kill-point seed {seed} (SLIMZOO_KILL_SEED={seed} reproduces it)")
    return random.Random(seed)


@pytest.mark.slow
def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path, synth_cls, rng):
    from slimzoo.storage import load_state_dict_file

    common = ["train", "--data", str(synth_cls), "--model", "mobilenet_v1", "--width-mult", "0.25", "--image-size",
              "32", "--batch-size", "16", "--epochs", "4", "--workers", "0"]
    full, part = tmp_path / "full", tmp_path / "part"
    assert _run(common + ["--out", str(full)]).returncode == 0
    _kill_when(common + ["--out", str(part)], lambda: (part / "train_state.pt").is_file(), rng)
    r = _run(common + ["--out", str(part)])
    assert r.returncode == 0, r.stderr
    a, b = load_state_dict_file(full / "model.safetensors"), load_state_dict_file(part / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_sensitivity_killed_mid_run_keeps_every_finished_point(tmp_path, synth_cls, rng):
    from slimzoo.checkpoint import save_checkpoint
    from slimzoo.models import create_model

    torch.manual_seed(0)
    ck = tmp_path / "ck"
    save_checkpoint(create_model("mobilenet_v1", num_classes=10, width_mult=0.25), ck,
                    {"model": "mobilenet_v1", "num_classes": 10, "width_mult": 0.25, "image_size": 32})
    common = ["sensitivity", "--data", str(synth_cls), "--checkpoint", str(ck), "--image-size", "32",
              "--eval-images", "48", "--workers", "0", "--stop-loss", "1.0"]
    full, part = tmp_path / "full.json", tmp_path / "part.json"
    assert _run(common + ["--out", str(full)]).returncode == 0

    def some_points():
        try:
            return json.loads(part.read_text())["evaluations"] >= 3
        except (OSError, ValueError, KeyError):
            return False
    _kill_when(common + ["--out", str(part)], some_points, rng, extra_delay=1.0)
    before = json.loads(part.read_text())  # never a torn file: written atomically
    r = _run(common + ["--out", str(part)])
    assert r.returncode == 0, r.stderr
    after, ref = json.loads(part.read_text()), json.loads(full.read_text())
    assert after["layers"] == ref["layers"]
    assert after["evaluations"] == ref["evaluations"]  # cumulative count: nothing evaluated twice
    for name, e in before["layers"].items():  # points finished before the kill are kept as they were
        assert e["points"] == after["layers"][name]["points"][: len(e["points"])]


@pytest.mark.slow
def test_zoo_killed_mid_run_reuses_finished_rows(tmp_path, rng):
    out, ref = tmp_path / "zoo", tmp_path / "ref"
    rows = ["--rows", "cls-mobilenet_v1-none", "cls-mobilenet_v1-quant", "cls-mobilenet_v1-prune50"]
    assert _run(["zoo", "--out", str(ref), "--profile", "smoke", *rows]).returncode == 0
    first = out / "rows" / "cls-mobilenet_v1-none.json"
    _kill_when(["zoo", "--out", str(out), "--profile", "smoke", *rows], first.is_file, rng, extra_delay=4.0)
    kept = {p.name: p.read_bytes() for p in (out / "rows").glob("*.json")}
    assert "cls-mobilenet_v1-none.json" in kept
    r = _run(["zoo", "--out", str(out), "--profile", "smoke", *rows])
    assert r.returncode == 0, r.stderr
    for name, data in kept.items():  # finished rows were neither recomputed nor lost
        assert (out / "rows" / name).read_bytes() == data
    got = {r["id"]: r["metric"]["value"] for r in json.loads((out / "results.json").read_text())["rows"]}
    want = {r["id"]: r["metric"]["value"] for r in json.loads((ref / "results.json").read_text())["rows"]}
    assert got == want  # the same metrics as the uninterrupted run


def test_bad_samples_stop_the_run_unless_skipping_is_asked(tmp_path, synth_cls):
    import shutil

    root = tmp_path / "cls"
    shutil.copytree(synth_cls, root)
    bad = root / (root / "val_list.txt").read_text().split()[0]
    bad.write_bytes(b"\xff\xd8 truncated jpeg")
    strict = get_task("classification", data_root=root, image_size=32, num_workers=0)
    with pytest.raises(DataError, match=bad.name):
        strict.evaluate(lambda x: torch.zeros(x.shape[0], 10))
    lenient = get_task("classification", data_root=root, image_size=32, num_workers=0, skip_bad_samples=True)
    with pytest.warns(UserWarning, match="skipped"):
        res = lenient.evaluate(lambda x: torch.zeros(x.shape[0], 10))
    assert res["skipped"] == 1 and res["num_images"] == len(lenient.val_dataset()) - 1
    r = _run(["eval", "--data", str(root), "--image-size", "32", "--model", "mobilenet_v1", "--width-mult", "0.25",
              "--num-classes", "10", "--workers", "0"])
    assert r.returncode == 2 and bad.name in r.stderr and "Traceback" not in r.stderr


def test_bad_segmentation_label_is_skipped_when_asked(tmp_path):
    from slimzoo.data.synth_seg import write_synth_seg

    root = write_synth_seg(tmp_path / "seg", num_train=4, num_val=4, width=64, height=32, progress=False)
    lab = root / (root / "val_list.txt").read_text().splitlines()[2].split()[1]
    Image.new("L", (5, 5)).save(lab)
    task = get_task("segmentation", data_root=root, image_size=32, batch_size=2, num_workers=0,
                    skip_bad_samples=True)
    with pytest.warns(UserWarning, match=Path(lab).name):
        res = task.evaluate(lambda x: torch.zeros(x.shape[0], 8, *x.shape[-2:]))
    assert res["skipped"] == 1 and res["num_images"] == 3
