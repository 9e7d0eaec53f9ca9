"""benchmarks/gan.py --fid-only: two processes share the deferred Inception FIDs of one results file."""
from __future__ import annotations

import fcntl
import json
import sys

import pytest


def results(tmp_path):
    """A results file as a --defer-fid training leaves it: two runs, one milestone each, no Inception FID yet."""
    runs = {}
    for name in ("ns-ema", "r3"):
        snap = tmp_path / "runs" / f"digits_t_{name}@30cpumin"
        snap.mkdir(parents=True)
        runs[name] = {"overrides": {}, "curve": [], "steps": 10, "final": {},
                      "milestones": {"30": {"step": 10, "train_cpu_s": 1800.0, "snapshot": str(snap)}}}
    path = tmp_path / "res" / "gan_digits_t.json"
    path.parent.mkdir()
    path.write_text(json.dumps({"date": "d", "machine": "m", "command": "c", "data": "digits", "runs": runs}))
    return path


def fid_only(mod, tmp_path, monkeypatch, *extra):
    monkeypatch.setattr(sys, "argv", ["gan.py", "--data", "digits", "--fid-only", "--fid-n", "10000", "--tag", "t",
                                      "--no-fid-floor", "--runs", str(tmp_path / "runs"),
                                      "--results", str(tmp_path / "res"), *extra])
    mod.main()


def test_fid_only_skips_a_snapshot_another_process_holds_and_keeps_its_result(bench_script, tmp_path,
                                                                              monkeypatch):
    mod, path = bench_script("gan.py"), results(tmp_path)
    scored = []

    def fake_fid(a, data, run, name):
        scored.append(name)
        # meanwhile the other process finishes ns-ema and writes it to the shared file
        disk = json.loads(path.read_text())
        disk["runs"]["ns-ema"]["milestones"]["30"]["inception_fid"] = {"value": 7.0, "n": 10000}
        path.write_text(json.dumps(disk))
        return {"value": 5.0, "n": a.fid_n}

    monkeypatch.setattr(mod, "inception_fid", fake_fid)
    held = tmp_path / "runs" / "digits_t_ns-ema@30cpumin" / ".inception_fid.lock"
    with open(held, "a+") as lock:     # the other process is scoring ns-ema
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        fid_only(mod, tmp_path, monkeypatch)
    assert scored == ["r3"]
    runs = json.loads(path.read_text())["runs"]
    assert runs["r3"]["milestones"]["30"]["inception_fid"]["value"] == 5.0
    assert runs["ns-ema"]["milestones"]["30"]["inception_fid"]["value"] == 7.0   # not overwritten
    assert "| r3 | 30 (30.00) | 10 | 5.00 (10000)" in path.with_suffix(".md").read_text()


def test_fid_only_does_not_rescore_what_another_process_finished_after_it_started(bench_script, tmp_path,
                                                                                 monkeypatch):
    mod, path = bench_script("gan.py"), results(tmp_path)
    scored = []

    def fake_fid(a, data, run, name):
        scored.append(name)
        if name == "ns-ema":   # the other process scores r3 while this one works on ns-ema
            disk = json.loads(path.read_text())
            disk["runs"]["r3"]["milestones"]["30"]["inception_fid"] = {"value": 6.0, "n": 10000}
            path.write_text(json.dumps(disk))
        return {"value": 8.0, "n": a.fid_n}

    monkeypatch.setattr(mod, "inception_fid", fake_fid)
    fid_only(mod, tmp_path, monkeypatch)
    assert scored == ["ns-ema"]
    runs = json.loads(path.read_text())["runs"]
    assert runs["r3"]["milestones"]["30"]["inception_fid"]["value"] == 6.0
    assert runs["ns-ema"]["inception_fid"]["value"] == 8.0


def test_curve_plot_draws_every_run_and_the_earlier_file(bench_script, tmp_path, monkeypatch):
    """The curve plot has one line per config and file on the left (domain FID per chunk) and one per config and
    file with a scored milestone on the right (Inception FID); runs without points are left out, not drawn empty."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    mod = bench_script("gan.py")
    path = results(tmp_path)
    res = json.loads(path.read_text())
    res["runs"]["ns-ema"]["curve"] = [{"step": s, "train_s": s, "train_cpu_s": 60.0 * s, "domain_fid": 20.0 / s}
                                      for s in (1, 2, 3)]
    res["runs"]["ns-ema"]["milestones"]["30"]["inception_fid"] = {"value": 12.5}
    path.write_text(json.dumps(res))
    earlier = path.with_name("gan_digits_t_before.json")
    res["runs"]["r3"]["curve"] = [{"step": 1, "train_s": 1, "train_cpu_s": 60.0, "domain_fid": 9.0}]
    earlier.write_text(json.dumps(res))
    drawn = []
    real_savefig = plt.Figure.savefig

    def spy(fig, *args, **kw):
        drawn.append([[line.get_label() for line in ax.lines] for ax in fig.axes])
        return real_savefig(fig, *args, **kw)

    monkeypatch.setattr(plt.Figure, "savefig", spy)
    out = mod.curve_plot(path, [earlier])
    assert out.is_file() and out.stat().st_size > 0
    left, right = drawn[0]
    assert left == ["ns-ema", "ns-ema (before)", "r3 (before)"]
    assert right == ["ns-ema", "ns-ema (before)"]


def test_fid_only_scores_just_the_milestones_asked_for(bench_script, tmp_path, monkeypatch):
    mod, path = bench_script("gan.py"), results(tmp_path)
    disk = json.loads(path.read_text())
    for name, rec in disk["runs"].items():
        snap = tmp_path / "runs" / f"digits_t_{name}@90cpumin"
        snap.mkdir()
        rec["milestones"]["90"] = {"step": 30, "train_cpu_s": 5400.0, "snapshot": str(snap)}
    path.write_text(json.dumps(disk))
    scored = []
    monkeypatch.setattr(mod, "inception_fid", lambda a, data, run, name: scored.append(run.name) or {"value": 4.0})
    fid_only(mod, tmp_path, monkeypatch, "--fid-milestones", "90")
    assert scored == ["digits_t_ns-ema@90cpumin", "digits_t_r3@90cpumin"]
    runs = json.loads(path.read_text())["runs"]
    assert all("inception_fid" not in r["milestones"]["30"] for r in runs.values())


def test_the_markdown_names_each_runs_own_command(bench_script, tmp_path, monkeypatch):
    mod, path = bench_script("gan.py"), results(tmp_path)
    disk = json.loads(path.read_text())
    disk["command"] = "a mix of every process that wrote the file"
    for name, rec in disk["runs"].items():
        rec["command"] = f"python benchmarks/gan.py --configs {name}"
    path.write_text(json.dumps(disk))
    monkeypatch.setattr(mod, "inception_fid", lambda a, data, run, name: {"value": 4.0})
    fid_only(mod, tmp_path, monkeypatch)
    head = path.with_suffix(".md").read_text().split("\n\n")[0]
    assert "- ns-ema: `python benchmarks/gan.py --configs ns-ema`" in head
    assert "- r3: `python benchmarks/gan.py --configs r3`" in head
    assert "a mix" not in head


def test_a_milestone_no_run_has_is_refused_before_any_scoring(bench_script, tmp_path, monkeypatch):
    mod, path = bench_script("gan.py"), results(tmp_path)
    before = path.read_text()
    monkeypatch.setattr(mod, "inception_fid", lambda *a: pytest.fail("scored a snapshot"))
    with pytest.raises(SystemExit, match="--fid-milestones 95: .* has milestones 30"):
        fid_only(mod, tmp_path, monkeypatch, "--fid-milestones", "95")
    assert path.read_text() == before
