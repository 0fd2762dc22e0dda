"""Fuzzing the readers: malformed list files, labels.txt, COCO JSON, VOC XML, label PNGs and recipes either load
or raise slimzoo's own clear error (a SlimzooError naming the file), never another exception.

`make test` tries a bounded number of inputs per reader; `make fuzz` (SLIMZOO_FUZZ_EXAMPLES=2000) many more.
"""
import copy
import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from slimzoo.errors import SlimzooError

EXAMPLES = int(os.environ.get("SLIMZOO_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=os.environ.get("SLIMZOO_FUZZ_RANDOM") is None,
                suppress_health_check=list(HealthCheck))


def _loads_or_clear_error(fn, *args, where: str | None = None):
    """Call ``fn``; a SlimzooError must name ``where`` (the file); anything else fails the test."""
    try:
        return fn(*args)
    except SlimzooError as e:
        assert str(e).strip(), "empty error message"
        if where is not None:
            assert where in str(e), f"error does not name the file: {e}"
        return None


# -- text list files ---------------------------------------------------------------------------------
_line = st.one_of(
    st.text(max_size=40),
    st.builds(lambda p, lab: f"{p} {lab}", st.sampled_from(["a.jpg", "x/y.png", "", "../b.jpg"]),
              st.one_of(st.integers(-5, 20).map(str), st.text(max_size=4))),
    st.builds(lambda a, b: f"images/{a}.png labels/{b}.png", st.text("ab1", max_size=3), st.text("ab1", max_size=3)),
)


@FUZZ
@given(lines=st.lists(_line, max_size=8))
def test_fuzz_classification_list_files(lines):
    from slimzoo.data.classification import parse_list_file

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "train_list.txt"
        p.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass") if _encodable(lines) else \
            p.write_bytes(b"\xff\xfe\x00garbage")
        _loads_or_clear_error(parse_list_file, p, Path(d), 10, where=str(p))


def _encodable(lines) -> bool:
    try:
        "\n".join(lines).encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


@FUZZ
@given(text=st.text(max_size=80))
def test_fuzz_labels_txt(text):
    from slimzoo.data.images import read_labels_txt

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "labels.txt"
        p.write_bytes(text.encode("utf-8", "surrogatepass"))
        _loads_or_clear_error(read_labels_txt, p, where=str(p))


@FUZZ
@given(lines=st.lists(_line, max_size=6), labels=st.text(max_size=30))
def test_fuzz_segmentation_list_and_labels(lines, labels):
    from slimzoo.data.segmentation import load_segmentation

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "labels.txt").write_bytes(labels.encode("utf-8", "surrogatepass"))
        (root / "train_list.txt").write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
        _loads_or_clear_error(load_segmentation, root, "train")


# -- COCO JSON: a valid document, then mutations --------------------------------------------------------
def _valid_coco() -> dict:
    return {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48},
                       {"id": 2, "file_name": "b.jpg", "width": 32, "height": 32}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [1, 2, 10, 20], "area": 200,
                             "iscrowd": 0},
                            {"id": 2, "image_id": 2, "category_id": 5, "bbox": [0, 0, 32, 32], "area": 1024,
                             "iscrowd": 0}],
            "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}]}


_junk = st.one_of(st.none(), st.booleans(), st.integers(-10, 100), st.floats(allow_nan=True), st.text(max_size=5),
                  st.lists(st.integers(-5, 50), max_size=5), st.dictionaries(st.text(max_size=3), st.integers(),
                                                                              max_size=2))


@st.composite
def _mutated_coco(draw):
    doc = _valid_coco()
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from([("images",), ("annotations",), ("categories",), ("images", 0), ("annotations", 0),
                                     ("categories", 0), ("annotations", 1)]))
        key = draw(st.sampled_from(["id", "file_name", "width", "height", "image_id", "category_id", "bbox", "name",
                                    None]))
        obj = doc
        try:
            for k in path[:-1]:
                obj = obj[k]
            last = path[-1]
            target = obj[last]
        except (KeyError, IndexError, TypeError):
            continue
        if not isinstance(obj, (dict, list)):
            continue
        op = draw(st.sampled_from(["delete", "replace"]))
        if key is None or not isinstance(target, dict):
            if op == "delete" and isinstance(obj, (dict, list)):
                del obj[last]
            else:
                obj[last] = draw(_junk)
        elif op == "delete":
            target.pop(key, None)
        else:
            target[key] = draw(_junk)
    return doc


def _load_coco_annotation(raw: bytes, where: bool = False) -> None:
    """Write ``raw`` as a COCO split's instances file and load it (the error must name that file if ``where``)."""
    from slimzoo.data.detection import load_coco

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "val2017").mkdir()
        ann = root / "annotations" / "instances_val2017.json"
        ann.parent.mkdir()
        ann.write_bytes(raw)
        _loads_or_clear_error(load_coco, root, "val", where=str(ann) if where else None)


@FUZZ
@given(doc=_mutated_coco())
def test_fuzz_coco_json(doc):
    _load_coco_annotation(json.dumps(doc).encode())


@FUZZ
@given(raw=st.binary(max_size=200))
def test_fuzz_coco_bytes(raw):
    _load_coco_annotation(raw, where=True)


# -- VOC XML: a valid file, then text-level mutations -------------------------------------------------
_VOC = ("<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height><depth>3</depth></size>"
        "<object><name>cat</name><difficult>0</difficult><bndbox><xmin>1</xmin><ymin>2</ymin><xmax>30</xmax>"
        "<ymax>40</ymax></bndbox></object></annotation>")


@st.composite
def _mutated_voc(draw):
    text = _VOC
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["cut", "insert", "field"]))
        if kind == "cut":
            i = draw(st.integers(0, len(text) - 1))
            j = draw(st.integers(i, min(len(text), i + 20)))
            text = text[:i] + text[j:]
        elif kind == "insert":
            i = draw(st.integers(0, len(text)))
            text = text[:i] + draw(st.text(max_size=6)) + text[i:]
        else:
            field = draw(st.sampled_from(["64", "48", "cat", "0", "1", "2", "30", "40"]))
            text = text.replace(f">{field}<", f">{draw(st.text(max_size=5))}<", 1)
    return text


@FUZZ
@given(xml=_mutated_voc())
def test_fuzz_voc_xml(xml):
    from slimzoo.data.detection import parse_voc_xml

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "a.xml"
        p.write_bytes(xml.encode("utf-8", "surrogatepass"))
        _loads_or_clear_error(parse_voc_xml, p, ["cat", "dog"], 1, Path(d) / "a.jpg", where=str(p))


# -- label PNGs ----------------------------------------------------------------------------------------
@FUZZ
@given(h=st.integers(1, 12), w=st.integers(1, 12), mode=st.sampled_from(["L", "P", "RGB", "I;16", "1", "LA"]),
       values=st.lists(st.integers(0, 255), min_size=1, max_size=4), truncate=st.integers(0, 3))
def test_fuzz_label_pngs(h, w, mode, values, truncate):
    from slimzoo.data.segmentation import load_label

    arr = np.resize(np.asarray(values, np.uint8), (h, w))
    im = Image.fromarray(arr)
    if mode == "P":
        im = im.convert("P")
    elif mode != "L":
        im = im.convert(mode)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.png"
        im.save(p)
        if truncate:
            p.write_bytes(p.read_bytes()[: -truncate * 17])
        lab = _loads_or_clear_error(load_label, p, 8, (12, 8), where=str(p))
        if lab is not None:
            assert lab.shape == (8, 12) and ((lab < 8) | (lab == 255)).all()


# -- recipes -------------------------------------------------------------------------------------------
_VALID_RECIPE = {"id": "cls-x-none", "task": "classification", "model": "mobilenet_v1", "dataset": "synth-cls",
                 "strategy": "none", "image_size": 64, "train": {"epochs": 1}}


@FUZZ
@given(key=st.sampled_from(sorted(_VALID_RECIPE) + ["base", "quant", "prune", "bogus", "finetune"]),
       value=_junk, drop=st.booleans(), raw=st.one_of(st.none(), st.text(max_size=40)))
def test_fuzz_recipes(key, value, drop, raw):
    from slimzoo.zoo import Zoo, load_recipes

    import yaml

    with tempfile.TemporaryDirectory() as d:
        rd = Path(d)
        (rd / "profiles.yaml").write_text("default: {rows: {}}\n")
        r = copy.deepcopy(_VALID_RECIPE)
        if drop:
            r.pop(key, None)
        else:
            r[key] = value
        (rd / "cls-x-none.yaml").write_text(raw if raw is not None else yaml.safe_dump(r))
        recipes = _loads_or_clear_error(load_recipes, rd)
        if recipes:
            zoo = Zoo(Path(d) / "out", recipes_dir=rd, progress=False)
            for rid in recipes:
                _loads_or_clear_error(zoo.recipe, rid)
                _loads_or_clear_error(zoo._resolved_configs, zoo.recipes[rid])


@pytest.mark.parametrize("payload", [b"", b"not onnx at all", b"\x08\x01\x12\x00garbage"])
def test_files_that_are_not_onnx_are_refused_clearly(tmp_path, payload):
    from slimzoo.runtime import OnnxPredictor

    p = tmp_path / "m.onnx"
    p.write_bytes(payload)
    with pytest.raises(SlimzooError, match="m.onnx"):
        OnnxPredictor(p)


# -- the CLI's numeric options and checkpoint config files -----------------------------------------------------
def _numeric_options():
    from test_cli_ranges import OPTIONS

    return OPTIONS


_number_text = st.one_of(st.integers(-10**15, 10**15).map(str), st.floats(allow_nan=True, allow_infinity=True).map(
    str), st.text(max_size=12))


@FUZZ
@given(which=st.integers(0, 10**6), text=_number_text)
def test_fuzz_cli_numeric_options(which, text):
    """Any text given to any numeric option parses to a value inside its declared range, or is refused with
    exit status 2 (argparse's one-line error), never a traceback."""
    from slimzoo.cli import build_parser

    options = _numeric_options()
    path, opt, kind = options[which % len(options)]
    try:
        ns = build_parser().parse_args([*path, f"{opt}={text}"])
    except SystemExit as e:
        assert e.code == 2
        return
    value = getattr(ns, opt.lstrip("-").replace("-", "_"))
    for v in value if isinstance(value, list) else [value]:
        assert kind.accepts(v), (opt, text, v)


_config_value = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12), st.floats(), st.text(max_size=8),
                          st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=3),
                                                                                     st.integers(), max_size=2))


@FUZZ
@given(changes=st.dictionaries(st.sampled_from(["model", "num_classes", "width_mult", "classes", "pruning"]),
                               _config_value, max_size=3), drop=st.sampled_from([None, "model", "num_classes"]))
def test_fuzz_checkpoint_config(changes, drop, tmp_path_factory):
    """A checkpoint's config.json with fields of other types or sizes loads (and then the model has the classes it
    says) or raises a SlimzooError naming the file: never a traceback, never a giant allocation."""
    from slimzoo.checkpoint import load_checkpoint, save_checkpoint
    from slimzoo.models import create_model

    ckpt = tmp_path_factory.getbasetemp() / "fuzz_ckpt"
    if not (ckpt / "model.safetensors").is_file():
        save_checkpoint(create_model("mobilenet_v1", num_classes=3, width_mult=0.25), ckpt,
                        {"model": "mobilenet_v1", "num_classes": 3, "width_mult": 0.25, "classes": ["a", "b", "c"]})
        (ckpt / "base.json").write_text((ckpt / "config.json").read_text())
    cfg = {**json.loads((ckpt / "base.json").read_text()), **changes}
    cfg.pop(drop, None)
    (ckpt / "config.json").write_text(json.dumps(cfg))
    model = _loads_or_clear_error(load_checkpoint, ckpt, where=str(ckpt))
    if model is not None:
        assert model[0].fc.out_features == 3
