"""The plain progress lines a non-terminal stderr gets (cli/common.py `PlainProgress`)."""

from __future__ import annotations

import re

import pytest

from dydis.cli import common
from dydis.cli.common import PlainProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(monkeypatch, capsys):
    monkeypatch.setattr(common, "console", common.Console(stderr=True, width=200))
    return lambda: capsys.readouterr().err.splitlines()


def test_a_line_every_30_s_or_10_percent_whichever_is_rarer(lines):
    clock = Clock()
    with PlainProgress(clock).task("features", total=1000, unit="img") as task:
        for _ in range(100):  # 10 img every 5 s: 10 % takes 50 s, so lines come every 50 s (10 % is rarer)
            clock.now += 5
            task.advance(10)
    out = lines()
    assert out[:3] == ["features start 10/1000 img", "features 100/1000 img 2 img/s eta 0:07:30",
                       "features 200/1000 img 2 img/s eta 0:06:40"]  # the rate counts from the first advance
    assert [re.match(r"features (\d+)/1000 img", line)[1] for line in out[1:-1]] == [str(k * 100) for k in range(1, 11)]
    assert out[-1] == "features done 1000/1000 img in 0:08:20"
    with PlainProgress(clock).task("fits", total=10, unit="fit") as task:
        for _ in range(10):  # 1 fit (10 %) every 20 s: lines come every 40 s (30 s is rarer)
            clock.now += 20
            task.advance(1)
    out = lines()
    assert out[0] == "fits start 1/10 fit" and out[-1] == "fits done 10/10 fit in 0:03:20"
    assert [re.match(r"fits (\d+)/10 fit", line)[1] for line in out[1:-1]] == ["2", "4", "6", "8", "10"]


def test_a_task_that_logs_prints_its_log_steps_and_says_where_it_stopped(lines):
    clock = Clock()
    with pytest.raises(KeyboardInterrupt), PlainProgress(clock).task("train-ldm", total=2400, unit="step") as task:
        task.advance(1200)  # resumed: the catch-up is no speed
        for step in range(1201, 1321):
            clock.now += 0.5
            task.advance(1)
            if step % 40 == 0:  # a log line every 20 s: no other line in between
                task.log({"epoch": step / 37, "loss": 0.23412345, "images/s": 145.2})
        raise KeyboardInterrupt
    assert lines() == ["train-ldm start 1200/2400 step",
                       "train-ldm step 1240/2400 epoch 33.51 loss 0.2341 images/s 145.2 eta 0:09:40",
                       "train-ldm step 1280/2400 epoch 34.59 loss 0.2341 images/s 145.2 eta 0:09:20",
                       "train-ldm step 1320/2400 epoch 35.68 loss 0.2341 images/s 145.2 eta 0:09:00",
                       "train-ldm stopped at 1320/2400 step in 0:01:00"]


def test_log_values_print_the_epoch_with_2_decimals_and_losses_with_4_significant_digits(lines):
    """train-vqgan's line as it was reported (`epoch 0.1339 l1 0.55352`), and tiny or large losses."""
    with PlainProgress(Clock()).task("train-vqgan", total=1100, unit="step") as task:
        task.advance(30)
        task.log({"epoch": 0.13392857, "l1": 0.553524, "images/s": 17.5})
        task.log({"epoch": 2, "l1": 0.000123456, "g_loss": 1234.56, "images/s": 17.5})
    assert lines()[1:3] == ["train-vqgan step 30/1100 epoch 0.13 l1 0.5535 images/s 17.5 eta ?",
                            "train-vqgan step 30/1100 epoch 2.00 l1 0.0001235 g_loss 1235 images/s 17.5 eta ?"]


def test_a_task_refused_before_its_first_advance_prints_nothing(lines):
    """Bad input found while a task starts stays a one-line error."""
    with pytest.raises(ValueError), PlainProgress(Clock()).task("writing data.h5", total=64, unit="img"):
        raise ValueError("truncated")
    assert lines() == []
