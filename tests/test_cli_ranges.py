"""The CLI's numeric options, walked from its own parser: every one has a declared range (slimzoo.cli_args.Num),
and zero (where the range excludes it), negative, NaN, infinite, huge and non-numeric values are refused with exit
status 2 and one line on stderr, no traceback. Also: zoo settings that match nothing are refused the same way."""
import argparse

import pytest

from slimzoo.cli import build_parser, main
from slimzoo.cli_args import Num

BAD_VALUES = ["0", "-1", "-0.5", "nan", "inf", "-inf", "1e30", str(10**12), "abc", ""]


def _parsers(parser, path=()):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _options():
    out = []
    for path, parser in _parsers(build_parser()):
        for a in parser._actions:
            if a.option_strings and (isinstance(a.type, Num) or a.type in (int, float)):
                out.append((path, a.option_strings[-1], a.type))
    return out


OPTIONS = _options()


def test_every_numeric_option_declares_a_range():
    assert len(OPTIONS) > 40  # the walk found the subcommands' options
    undeclared = [f"{' '.join(p)} {opt}" for p, opt, t in OPTIONS if not isinstance(t, Num)]
    assert not undeclared, f"numeric options without a declared range (use slimzoo.cli_args.Num): {undeclared}"


def _one_line_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err
    assert e.value.code == 2, (argv, err)
    assert err.count("\n") == 1 and err.startswith("slimzoo"), (argv, err)
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("path,opt,kind", OPTIONS, ids=[f"{' '.join(p)} {o}" for p, o, _ in OPTIONS])
def test_bad_values_exit_2_with_one_line(path, opt, kind, capsys):
    refused = 0
    for value in BAD_VALUES:
        try:
            ok = kind.accepts(kind.kind(value))
        except ValueError:
            ok = False
        if ok:  # inside the declared range: only zero may be (a seed, a worker count, "no fine-tuning")
            assert float(value) == 0 and kind.lo == 0 and not kind.lo_open, (opt, value)
            continue
        err = _one_line_exit_2([*path, f"{opt}={value}"], capsys)
        assert opt in err and "expected" in err, err
        refused += 1
    assert refused >= len(BAD_VALUES) - 1


@pytest.mark.parametrize("argv", [
    ["data", "synth", "--task", "seg", "--seg-size", "0x64"],
    ["data", "synth", "--task", "seg", "--seg-size", "64x-3"],
    ["data", "synth", "--task", "seg", "--seg-size", "nanx64"],
    ["data", "synth", "--task", "seg", "--seg-size", "100000x100000"],
])
def test_size_options_refused_in_one_line(argv, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seg-size" in err and "Traceback" not in err
    assert not (tmp_path / "d").exists()  # refused before anything was written


@pytest.mark.parametrize("extra,needle", [
    (["--set", "image_sise=224"], "image_sise"),
    (["--set", "quant.num_calibraton=5"], "num_calibraton"),
    (["--set", "train.epochs=-1"], "epochs"),
    (["--set", "id=../../escape"], "id"),
    (["--weights", "cls-nothing-none=w.pth"], "cls-nothing-none"),
    (["--weights", "cls-mobilenet_v1-quant=w.pth"], "cls-mobilenet_v1-quant"),
    (["--data-root", "synth-clss=/data"], "synth-clss"),
])
def test_zoo_settings_that_match_nothing_are_refused(extra, needle, tmp_path, capsys):
    assert main(["zoo", "--out", str(tmp_path / "zoo"), "--rows", "cls-mobilenet_v1-none", *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err
    assert not (tmp_path / "zoo").exists()
