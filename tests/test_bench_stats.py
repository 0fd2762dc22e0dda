"""The statistics the quantization benchmarks report (benchmarks/_heldout.py)."""
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _heldout import compare, paired_gap


def test_compare_counts_drop_interval_and_agreement():
    true = np.array([0, 1, 2, 3, 0, 1, 2, 3])
    ref = np.array([0, 1, 2, 3, 0, 1, 2, 0])  # 7 of 8 right
    pred = np.array([0, 1, 2, 0, 0, 1, 1, 0])  # 5 of 8 right; differs from ref on 2 images
    c = compare(pred, ref, true)
    assert c["top1"] == pytest.approx(62.5) and c["drop"] == pytest.approx(25.0)
    assert c["agree"] == pytest.approx(75.0) and c["num_images"] == 8
    d = np.array([0, 0, 0, 1, 0, 0, 1, 0], float)  # per image: ref right, pred wrong
    assert c["drop_ci95"] == pytest.approx(100 * 1.96 * d.std(ddof=1) / np.sqrt(8))
    same = compare(ref, ref, true)
    assert same["drop"] == 0 and same["drop_ci95"] == 0 and same["agree"] == 100


def test_draws_average_per_image_before_the_interval():
    true = np.zeros(4, int)
    draws = np.array([[0, 0, 1, 1], [0, 1, 1, 0]])  # image hit rates 1, .5, 0, .5
    c = compare(draws, np.zeros(4, int), true)
    assert c["top1"] == pytest.approx(50.0) and c["agree"] == pytest.approx(50.0)
    gap, ci = paired_gap(draws, np.array([0, 0, 0, 1]), true)  # b hits 1, 1, 1, 0
    per_image = np.array([0, -0.5, -1, 0.5])
    assert gap == pytest.approx(100 * per_image.mean())
    assert ci == pytest.approx(100 * 1.96 * per_image.std(ddof=1) / 2)


def test_write_csv_round_trips_and_leaves_no_temp_file(tmp_path):
    import csv

    from _heldout import write_csv

    write_csv(tmp_path / "r.csv", [{"model": "a", "drop": 0.1}, {"model": "b", "drop": -0.2}])
    with open(tmp_path / "r.csv", newline="") as f:
        assert list(csv.DictReader(f)) == [{"model": "a", "drop": "0.1"}, {"model": "b", "drop": "-0.2"}]
    assert [p.name for p in tmp_path.iterdir()] == ["r.csv"]
