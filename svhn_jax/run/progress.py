"""Where a run stands between compiled segments, and what it tells the user about it.

    Progress        the typed record every checkpoint holds (history, checks, best so far),
                    one per scored entry of a run (a model, or an ensemble)
    say_epoch       one line per epoch on stderr (a bar in front of it on a terminal)
    StopFlag        the first Ctrl-C or SIGTERM becomes a flag read between segments

No JAX here.
"""

from __future__ import annotations

import signal
import sys
from typing import NamedTuple

from .folder import say


class EpochSums(NamedTuple):
    """Running sums of the current epoch's training metrics."""

    loss: float = 0.0
    correct: int = 0
    steps: int = 0
    seen: int = 0
    seconds: float = 0.0


class Progress(NamedTuple):
    """Where a run stands between compiled segments; every checkpoint holds it."""

    history: tuple = ()        # one dict per finished epoch: the rows of history.csv
    gradchecks: tuple = ()     # one dict per per-step check: the rows of gradchecks.csv
    best_val_acc: float = -1.0
    best_epoch: int = 0
    bad_epochs: int = 0        # epochs since the best one, for early stopping
    sums: EpochSums = EpochSums()
    seconds: float = 0.0       # training time so far, over every session of the run
    status: str = "training"   # then completed, diverged or gradcheck_failed
    status_step: int | None = None   # the step that diverged or failed its check


def to_json(p: Progress) -> dict:
    return dict(p._asdict(), history=list(p.history), gradchecks=list(p.gradchecks),
                sums=p.sums._asdict())


def from_json(d: dict) -> Progress:
    return Progress(**dict(d, history=tuple(d["history"]), gradchecks=tuple(d["gradchecks"]),
                           sums=EpochSums(**d["sums"])))


def add_segment(p: Progress, *, loss_sum: float, correct: int, steps: int, seen: int,
                seconds: float) -> Progress:
    s = p.sums
    return p._replace(seconds=p.seconds + seconds, sums=EpochSums(
        s.loss + loss_sum, s.correct + correct, s.steps + steps, s.seen + seen, s.seconds + seconds))


def say_epoch(p: Progress, epochs: int, steps_left: int, steps_done_here: int, wall: float,
              quiet: bool) -> None:
    """The last history row as one line: losses, accuracies, images/s, elapsed, ETA (from
    this session's pace); with a bar in front on a terminal."""
    row = p.history[-1]
    eta = steps_left * wall / max(steps_done_here, 1)
    bar = _bar(row["epoch"], epochs) + " " if sys.stderr.isatty() else ""
    say(f"epoch {row['epoch']:>3}/{epochs} {bar}train loss {row['train_loss']:.4f} acc "
        f"{row['train_acc']:.2%} | val loss {row['val_loss']:.4f} acc {row['val_acc']:.2%} | "
        f"{row['images_per_s']:,.0f} img/s, elapsed {p.seconds:.1f} s, ETA {eta:.0f} s", quiet=quiet)


def _bar(done: int, total: int, width: int = 20) -> str:
    k = int(width * done / max(total, 1))
    return "[" + "#" * k + "." * (width - k) + "]"


class StopFlag:
    """Turns the first Ctrl-C (SIGINT) or SIGTERM (what a scheduler sends before it
    takes a machine back) into a flag checked between compiled segments; a second
    signal interrupts at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.set = False
        self.signal = None
        self._old = {}

    def __enter__(self):
        for sig in self.SIGNALS:
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the signals alone
                break
        return self

    def _handle(self, signum, frame):
        if self.set:
            raise KeyboardInterrupt
        self.set, self.signal = True, f"{signal.Signals(signum).name} received"

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
