"""Long loops say what they will cost before most of the work is done (issue 22: cost before work).

Every loop over a known number of units (sampling batches, Inception batches, IWAE calls, encoding chunks, network
calls of a sampler) goes through `Progress`: a tqdm bar with an ETA, and once the first unit is timed, one line with
the estimate for the whole loop, naming the cheaper option when the estimate is long.

    bar = Progress(total=40, desc="Inception features", unit="batch", log=print, cheaper="--n 2000")
    for i in range(40):
        work(i)
        bar.update()
    bar.close()

The estimate is the first unit's time times the units; the first unit often includes one-off warm-up, so it errs
on the long side.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
SAY_AFTER_S = 60.0  # an estimate above this is printed (with the cheaper option); shorter loops only show the bar
ESTIMATE_AFTER_S = 2.0  # fast units are timed over this many seconds (or a tenth of the loop), not on the first


def minutes_text(seconds: float) -> str:
    return f"{seconds / 60:.1f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def bar_interval() -> float:
    """Seconds between tqdm redraws: tqdm's 0.1 s on a terminal; 30 s when stderr is a file or a pipe (a log of a
    background job), so that a long loop writes a line now and then instead of megabytes of redraws."""
    try:
        return 0.1 if sys.stderr.isatty() else 30.0
    except (AttributeError, ValueError):
        return 30.0


def stderr_line(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class Progress:
    """A tqdm bar over `total` units; once timed (the first `update`, or for fast units ESTIMATE_AFTER_S seconds of
    them), `log(line)` hears the estimated time of the whole loop when it exceeds `say_after` seconds (always when
    `say_after` is 0), with `cheaper` appended. `initial`: units done before (a continued loop); the estimate is then
    for the rest."""

    def __init__(self, total: int, desc: str, *, unit: str = "it", log: Callable[[str], None] | None = stderr_line,
                 cheaper: str = "", what: str = "", enabled: bool = True, say_after: float = SAY_AFTER_S,
                 initial: int = 0):
        from tqdm.auto import tqdm
        self.total, self.desc, self.log, self.cheaper, self.what = total, desc, log, cheaper, what
        self.unit, self.initial = unit, initial
        self.say_after, self.done, self.timed = say_after, 0, False
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, leave=False, disable=not enabled,
                        dynamic_ncols=True, mininterval=bar_interval())

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        left = self.total - self.initial
        if self.timed or left <= self.done:
            return
        # Timed on the first unit, or for fast units (whose first also pays the warm-up: the IWAE's first call of
        # 50,000 took 1.7x a later one) on as many as fill ESTIMATE_AFTER_S seconds or a tenth of the loop.
        elapsed = time.perf_counter() - self.t0
        if elapsed < ESTIMATE_AFTER_S and self.done < max(1, left // 10):
            return
        self.timed = True
        estimate = elapsed / self.done * left
        if self.log is not None and estimate >= self.say_after:
            rest = f" (the rest: {left} of {self.total})" if self.initial else ""
            on = "the first" if self.done == 1 else f"the first {self.done} {self.unit}s"
            line = (f"{self.desc}: estimated {minutes_text(estimate)} for "
                    f"{self.what or f'{self.total} {self.unit}'}{rest} (timed on {on})")
            self.log(line + (f"; cheaper: {self.cheaper}" if self.cheaper else ""))

    def set_postfix(self, text: str) -> None:
        self.bar.set_postfix_str(text, refresh=False)   # shown at the next redraw (bar_interval), not forced

    def close(self) -> None:
        self.bar.close()


def progress(items: Iterable[T], total: int, desc: str, **kw) -> Iterator[T]:
    """`for x in progress(items, total, desc, ...)`: the items, one `Progress.update` after each."""
    bar = Progress(total, desc, **kw)
    try:
        for x in items:
            yield x
            bar.update()
    finally:
        bar.close()
