"""Declared valid ranges of the CLI's numeric options, checked in one place (at parse time).

Every ``type=`` of a numeric ``slimzoo`` option is a :class:`Num`: a kind (int or float) and an interval. A value
outside it, NaN, infinity or text that is not a number is refused by argparse with one line on stderr and exit
status 2 (see :class:`Parser`), before any work starts. ``tests/test_cli_ranges.py`` walks the parser and checks
that every numeric option has a declared range and refuses zero (where zero is outside it), negative, NaN and huge
values that way.
"""
from __future__ import annotations

import argparse
import math
import sys


class Num:
    """An argparse ``type``: a finite number of ``kind`` in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``, and the
    upper end open with ``hi_open``)."""

    def __init__(self, kind: type, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False):
        self.kind, self.lo, self.hi, self.lo_open, self.hi_open = kind, lo, hi, lo_open, hi_open
        self.__name__ = self.describe()  # argparse names the type in some of its messages

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        lo, hi = (f"{v:d}" if self.kind is int else f"{v:g}" for v in (self.lo, self.hi))
        return f"{what} in {'(' if self.lo_open else '['}{lo}, {hi}{')' if self.hi_open else ']'}"

    def accepts(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        above = value > self.lo if self.lo_open else value >= self.lo
        below = value < self.hi if self.hi_open else value <= self.hi
        return above and below

    def __call__(self, text: str):
        try:
            value = self.kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text!r}") from None
        if not self.accepts(value):
            raise argparse.ArgumentTypeError(f"expected {self.describe()}, got {text}")
        return value

    def __repr__(self) -> str:
        return f"Num({self.describe()})"


# the ranges, by meaning; upper bounds keep a typo (an extra zero or three) from starting a run of days or an
# allocation of terabytes
IMAGE_SIZE = Num(int, 8, 8192)
BATCH_SIZE = Num(int, 1, 65536)
WORKERS = Num(int, 0, 256)
NUM_CLASSES = Num(int, 1, 100_000)
WIDTH_MULT = Num(float, 0, 8, lo_open=True)
COUNT = Num(int, 1, 100_000_000)  # images, steps, iterations, runs
COUNT0 = Num(int, 0, 100_000_000)  # the same where 0 means "none"
EPOCHS = Num(int, 1, 100_000)
EPOCHS0 = Num(int, 0, 100_000)  # fine-tuning epochs: 0 = none
SEED = Num(int, 0, 2**32 - 1)
LR = Num(float, 0, 10, lo_open=True)
WEIGHT_DECAY = Num(float, 0, 10)
THREADS = Num(int, 1, 1024)
FRACTION_OPEN = Num(float, 0, 1, lo_open=True, hi_open=True)  # (0, 1): ratios, FLOPs reduction
FRACTION = Num(float, 0, 1)  # [0, 1]
STOP_LOSS = Num(float, 0, 1, lo_open=True)
MAX_DROP = Num(float, 0, 100, lo_open=True)  # metric points
ROUND_TO = Num(int, 1, 1024)
SYNTH_SIZE = Num(int, 16, 4096)
SIZE_SIDE = Num(int, 1, 16384)  # one side of an HxW option (--seg-size, --eval-size)


def hw(text: str, flag: str) -> tuple[int, int]:
    """``"HxW"`` -> ``(H, W)``, each side in :data:`SIZE_SIDE`; a ConfigError naming ``flag`` otherwise."""
    from .errors import ConfigError

    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"{flag} expects a size HxW such as 512x1024, got {text!r}") from None
    if not (SIZE_SIDE.accepts(h) and SIZE_SIDE.accepts(w)):
        raise ConfigError(f"{flag}: each side must be {SIZE_SIDE.describe()}, got {text!r}")
    return h, w


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (exit status 2), like slimzoo's own errors."""

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")
        sys.exit(2)
