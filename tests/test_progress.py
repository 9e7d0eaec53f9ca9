"""Cost before work (issue 22): a long loop prints its estimated time after its first unit, with the cheaper option;
a short one only shows its bar."""
import itertools

import pytest
import torch

import dgm.progress as P


@pytest.fixture
def clock(monkeypatch):
    """perf_counter advancing by `step` seconds per read."""
    state = {"step": 10.0}
    ticks = itertools.count()
    monkeypatch.setattr(P.time, "perf_counter", lambda: next(ticks) * state["step"])
    return state


def test_a_long_loop_says_its_estimate_and_the_cheaper_option_once(clock):
    lines = []
    for _ in P.progress(range(30), 30, "sampling", unit="batch", log=lines.append, cheaper="--n 2500",
                        what="10000 samples", enabled=False):
        pass
    # 10 s for the first of 30 batches: 300 s, above the 60 s threshold
    assert lines == ["sampling: estimated 5.0 min for 10000 samples (timed on the first); cheaper: --n 2500"]


def test_a_short_loop_stays_quiet_unless_asked(clock):
    clock["step"] = 1.0
    lines = []
    for _ in P.progress(range(5), 5, "features", log=lines.append, enabled=False):
        pass
    assert lines == []
    bar = P.Progress(5, "IWAE", log=lines.append, enabled=False, say_after=0)  # the NLL always says it
    bar.update()
    bar.close()
    assert lines == ["IWAE: estimated 0.1 min for 5 it (timed on the first)"]
    assert P.minutes_text(7200) == "2.0 h"


def test_fast_units_are_timed_over_a_few_seconds_not_on_the_first(clock):
    """The first of many fast units also pays the warm-up: the estimate waits for ESTIMATE_AFTER_S of them."""
    clock["step"] = 0.1
    lines = []
    bar = P.Progress(1000, "IWAE", unit="call", log=lines.append, enabled=False, say_after=0)
    for _ in range(50):
        bar.update()
    bar.close()
    assert lines == ["IWAE: estimated 1.7 min for 1000 call (timed on the first 20 calls)"]   # 2 s / 20 x 1000


def test_diffusion_sampling_counts_every_step_and_names_the_cheaper_sampler(monkeypatch):
    from dgm.models.diffusion import Diffusion, DiffusionConfig
    seen = []
    real = P.Progress.__init__

    def spy(self, total, desc, **kw):
        seen.append((total, kw["what"], kw["cheaper"]))
        real(self, total, desc, **{**kw, "enabled": False})
    monkeypatch.setattr(P.Progress, "__init__", spy)
    updates = []
    monkeypatch.setattr(P.Progress, "update", lambda self, n=1: updates.append(n))
    torch.manual_seed(0)
    m = Diffusion(DiffusionConfig(channels=1, image_size=8, base_channels=8, channel_mults=(1,), attn_levels=(),
                                  objective="ddpm", timesteps=20)).eval()
    m.sample(3, sampler="ddpm", batch_size=2, progress=True)   # two batches of all 20 steps
    assert seen == [(40, "3 samples, 20 network calls each (ddpm)", "--sampler ddim --steps 50")] and len(updates) == 40
