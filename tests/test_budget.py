"""benchmarks/budget.py (quality per CPU-minute): the harness on a tiny budget writes its table, plot and JSON with the
expected cells, --resume skips finished cells and reuses finished metrics, a killed training resumes with
`dgm train --resume`, and the protocol refuses an Inception FID on too few samples. No wall-clock assertions."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "budget.py"


def load_budget():
    spec = importlib.util.spec_from_file_location("budget", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def harness(tmp_path, *extra, check=True):
    cmd = [sys.executable, str(SCRIPT), "--data", "digits", "--minutes", "0.05", "--families", "ae,vae",
           "--fid", "none", "--n", "64", "--nll-k", "4", "--nll-n", "64", "--cluster-n", "64",
           "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return r


def state(tmp_path) -> dict:
    return json.loads((tmp_path / "out" / "budget.json").read_text())


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("budget")
    harness(tmp)
    return tmp


def test_tiny_budget_writes_the_table(table):
    s = state(table)
    assert set(s["cells"]) == {"ae@0.05", "vae@0.05"}
    vae, ae = s["cells"]["vae@0.05"], s["cells"]["ae@0.05"]
    assert vae["done"] and ae["done"] and "error" not in vae and "error" not in ae
    # each family's own number, with its protocol
    assert set(vae["metrics"]) == {"nll"} and vae["metrics"]["nll"]["k"] == 4 and vae["metrics"]["nll"]["n"] == 64
    assert set(ae["metrics"]) == {"cluster"} and 0 <= ae["metrics"]["cluster"]["value"] <= 1
    # trained on the budget: stopped by it, at least the budget of process CPU time
    for c in (vae, ae):
        assert c["train"]["stopped_by"] == "budget"
        assert c["train"]["cpu_seconds"] >= 0.05 * 60
        assert c["train"]["steps"] > 0
        assert "minutes=0.05" in c["train_command"]
    assert s["resume_command"].endswith("--resume")
    md = (table / "out" / "budget.md").read_text()
    assert "| ae |" in md and "| vae |" in md and "0.05 CPU-min" in md
    assert "k=4, 64 test" in md and "IWAE k = 4" in md
    png = (table / "out" / "budget.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert (table / "out" / "samples.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"  # each cell's samples, side by side


def test_resume_skips_finished_cells(table):
    before = state(table)
    cfg = table / "runs" / "vae_0p05min" / "config.json"
    mtime = cfg.stat().st_mtime_ns
    r = harness(table, "--resume")
    after = state(table)
    assert r.stdout.count("done, skipped") == 2
    assert len(after.get("log", [])) == len(before.get("log", []))  # no training or evaluation process started
    assert cfg.stat().st_mtime_ns == mtime
    assert after["cells"]["vae@0.05"]["metrics"] == before["cells"]["vae@0.05"]["metrics"]
    assert len(after["commands"]) == len(before["commands"]) + 1


def test_resume_reuses_metrics_and_resumes_a_killed_training(table):
    # A cell whose harness was killed after its training (not marked done): its metric is read back from eval.json.
    s = state(table)
    s["cells"]["ae@0.05"].pop("done")
    s["cells"]["ae@0.05"]["metrics"] = {}
    # A training that was killed: the run is unfinished (its last checkpoint is there).
    cfg_path = table / "runs" / "vae_0p05min" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["status"] = "unfinished"
    cfg_path.write_text(json.dumps(cfg))
    s["cells"]["vae@0.05"].pop("done")
    (table / "out" / "budget.json").write_text(json.dumps(s))
    n_log = len(s.get("log", []))
    harness(table, "--resume")
    after = state(table)
    new = [x["command"] for x in after["log"][n_log:]]
    # the killed training resumed, then its metric was measured again on the new weights; nothing ran for the AE
    assert len(new) == 2 and "--resume" in new[0] and "vae_0p05min" in new[0]
    assert "_eval" in new[1] and "vae_0p05min" in new[1] and " nll " in new[1]
    assert after["cells"]["ae@0.05"]["done"] and after["cells"]["ae@0.05"]["metrics"]["cluster"]["n"] == 64
    assert after["cells"]["vae@0.05"]["done"]
    assert json.loads(cfg_path.read_text())["status"] == "finished"


def test_resume_under_another_protocol_measures_again(table):
    n_log = len(state(table)["log"])
    harness(table, "--resume", "--nll-k", "5")
    after = state(table)
    new = [x["command"] for x in after["log"][n_log:]]
    assert len(new) == 1 and "_eval" in new[0] and " nll " in new[0]  # no training; the AE cell was skipped
    assert after["cells"]["vae@0.05"]["metrics"]["nll"]["k"] == 5 and after["cells"]["vae@0.05"]["done"]


def test_existing_table_needs_resume(table):
    r = harness(table, check=False)
    assert r.returncode != 0 and "--resume" in (r.stdout + r.stderr)


def test_inception_fid_refuses_too_few_samples(tmp_path):
    r = subprocess.run([sys.executable, str(SCRIPT), "--data", "digits", "--n", "64", "--out", str(tmp_path)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "--n > 2048" in r.stderr
    assert not (tmp_path / "budget.json").exists()


def test_table_and_plot_with_fid_and_anchors(tmp_path):
    b = load_budget()
    fid = {"value": 40.0, "n": 2500, "precision": "bf16", "reference": "mnist train, seeded subset of 10000"}
    cells = {}
    for fam, vals in (("gan", (40.0, 20.0)), ("vae", (90.0, 70.0)), ("diffusers-ddpm", (120.0, 60.0))):
        for m, v in zip((5, 15), vals):
            cells[b.cell_id(fam, m)] = {"family": fam, "minutes": m, "done": True,
                                        "metrics": {"fid": {**fid, "value": v}},
                                        "train": {"steps": 100, "cpu_seconds": m * 60, "wall_seconds": m * 90}}
    cells["vae@5"]["metrics"]["nll"] = {"value": 95.5, "stderr": 0.2, "k": 1000, "n": 10000, "precision": "bf16"}
    cells["vae@15"]["metrics"]["nll"] = {"value": 90.5, "stderr": 0.2, "k": 1000, "n": 10000}   # before the field
    cells["vae@5"]["machine"] = "Some Xeon (AMX), 2 CPUs"
    st = {"protocol": {"data": "mnist", "fid": "Inception FID, N = 2500"}, "cells": cells, "commands": []}
    md = b.render_md(st)
    assert "FID **40.00** (N=2500, bf16)" in md and "NLL **95.50** ± 0.20 nats (k=1000, 10000 test, bf16)" in md
    assert "NLL **90.50** ± 0.20 nats (k=1000, 10000 test, fp32)" in md
    assert "100 steps, 5.0 CPU-min (7.5 wall), Some Xeon (AMX), 2 CPUs" in md   # the cell's machine
    assert "| diffusers-ddpm |" in md and "5 CPU-min | 15 CPU-min" in md
    assert "| vae | FID 90.00, NLL 95.50 | FID 70.00, NLL 90.50 |" in md  # the short table
    assert "| diffusers-ddpm (anchor) | FID 120.00 | FID 60.00 |" in md
    b.plot(st, tmp_path / "p.png")
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_protocol_matching():
    b = load_budget()
    a = b.parse(["--out", "x", "--n", "2500", "--nll-k", "1000", "--nll-n", "10000"])
    assert b.matches("fid", {"value": 1, "n": 2500}, a)  # fp32, the default
    assert not b.matches("fid", {"value": 1, "n": 2500, "precision": "bf16"}, a)  # bf16: another protocol
    assert not b.matches("fid", {"value": 1, "n": 10000}, a)
    a16 = b.parse(["--out", "x", "--n", "2500", "--precision", "bf16"])
    assert b.matches("fid", {"value": 1, "n": 2500, "precision": "bf16"}, a16)
    assert b.matches("nll", {"value": 1, "n": 10000, "k": 1000}, a)
    assert not b.matches("nll", {"value": 1, "n": 1000, "k": 1000}, a)
    assert not b.matches("nll", {"value": 1, "n": 10000, "k": 5000}, a)
    assert b.matches("bpd", {"value": 1, "n": 1000, "timesteps": "50 stratified per image"}, a)
    assert b.cell_metrics("diffusion", a) == ["fid"] and b.cell_metrics("gan", a) == ["fid"]
    assert b.cell_metrics("vae", a) == ["nll", "fid"]
    assert b.cell_metrics("ae", b.parse(["--out", "x", "--fid", "none"])) == ["cluster"]


def test_cpu_minutes_to_the_same_quality():
    b = load_budget()
    # linear in log-minutes between measured budgets: halfway from 90 to 86 is the geometric mean of 5 and 15
    how, t = b.minutes_to_reach([(15, 86.0), (5, 90.0), (60, 84.0)], 88.0)
    assert how == "at" and t == pytest.approx((5 * 15) ** 0.5)
    assert b.minutes_to_reach([(5, 90.0), (15, 86.0)], 95.0) == ("below", 5)  # the first budget already does better
    assert b.minutes_to_reach([(5, 90.0), (15, 86.0)], 80.0) == ("above", 15)  # never reached on the curve
    cells = {}
    for fam, vals in (("vae", (90.0, 86.0, 84.0)), ("pythae-vae", (110.0, 95.0, 87.0))):
        for m, v in zip((5, 15, 60), vals):
            cells[b.cell_id(fam, m)] = {"family": fam, "minutes": m, "done": True, "metrics": {"nll": {"value": v}}}
    lines = b.cpu_ratios({"cells": cells})
    # pythae's 60-minute 87 nats: dgm's curve crosses 87 between 5 (90) and 15 (86)
    t = 5 * 3 ** 0.75  # 3/4 of the way from 90 to 86 in log-minutes
    assert any(f"60-minute 87.00 is reached by vae after ~{t:.1f}" in x and f"{60 / t:.1f}x" in x for x in lines)
    assert any("pythae-vae's 15-minute 95.00 is already beaten by vae's first budget" in x for x in lines)
    assert any("vae's 60-minute 84.00 is not reached by pythae-vae" in x for x in lines)
    assert "CPU-minutes to the same quality" in b.render_md({"cells": cells, "protocol": {}})


def test_variant_rows(tmp_path):
    b = load_budget()
    a = b.parse(["--out", "x", "--fid", "none", "--variant", "vae-iwae=vae:objective=iwae,iwae_k=3"])
    assert b.base_family("vae-iwae", a) == ("vae", ["objective=iwae", "iwae_k=3"])
    assert b.base_family("gan", a) == ("gan", []) and b.cell_metrics("vae-iwae", a) == ["nll"]
    for bad in ("vae-iwae", "x=vae:iwae_k", "x=vae:minutes=3", "vae=vae:iwae_k=3"):
        with pytest.raises(SystemExit):
            b.parse(["--out", "x", "--variant", bad])
    # a variant row trains its family with the options set (here on the tiny budget) and is named in the table
    harness(tmp_path, "--variant", "vae-iwae=vae:objective=iwae,iwae_k=2", "--families", "vae-iwae")
    st = state(tmp_path)
    c = st["cells"]["vae-iwae@0.05"]
    assert c["done"] and c["variant"] == {"family": "vae", "set": ["objective=iwae", "iwae_k=2"]}
    cfg = json.loads((tmp_path / "runs" / "vae-iwae_0p05min" / "config.json").read_text())
    assert cfg["model"]["objective"] == "iwae" and cfg["model"]["iwae_k"] == 2 and cfg["train"]["minutes"] == 0.05
    assert "row vae-iwae: vae with objective=iwae, iwae_k=2" in st["protocol"]["defaults"]
    assert "| vae-iwae |" in (tmp_path / "out" / "budget.md").read_text()


def test_a_longer_budget_continues_the_shorter_run(tmp_path):
    # vae-c@0.1 continues the finished vae-c@0.05 run (a constant lr: the same run a fresh one would be; the VAE's
    # own recipe decays its lr over the budget, which is never continued: the end of this test)
    harness(tmp_path, "--minutes", "0.05,0.1", "--families", "vae-c", "--variant", "vae-c=vae:lr_decay_start=1",
            "--nll-k", "2", "--nll-n", "16")
    cells = state(tmp_path)["cells"]
    assert all(c["done"] for c in cells.values()) and len(cells) == 2
    assert cells["vae-c@0.1"]["continued_from"] == "vae-c_0p05min" and "continued_from" not in cells["vae-c@0.05"]
    assert "resume" in cells["vae-c@0.1"]["train_command"]
    runs = tmp_path / "runs"
    short, long_ = (json.loads((runs / f"vae-c_{m}min" / "config.json").read_text()) for m in ("0p05", "0p1"))
    assert short["train"]["minutes"] == 0.05 and long_["train"]["minutes"] == 0.1  # the shorter run is kept as it was
    assert long_["progress"]["checkpoint_step"] > short["progress"]["checkpoint_step"]
    assert long_["progress"]["cpu_seconds"] >= 0.1 * 60
    def rows(m):
        return [json.loads(x)["step"] for x in (runs / f"vae-c_{m}min" / "metrics.jsonl").read_text().splitlines()]
    assert rows("0p1")[:len(rows("0p05"))] == rows("0p05") and rows("0p1") == sorted(set(rows("0p1")))
    assert "(the run vae-c_0p05min continued)" in (tmp_path / "out" / "budget.md").read_text()
    # not continued: a recipe other than today's defaults, or an lr that decays over the budget
    b = load_budget()
    from dgm.tasks import fresh_config
    fresh = fresh_config("vae", "digits", overrides={"lr_decay_start": "1"})
    assert b.same_recipe(short, fresh, "vae")
    assert not b.same_recipe({**short, "model": {**short["model"], "latent_dim": 3}}, fresh, "vae")
    old = {**short, "model": {k: v for k, v in short["model"].items() if k != "z1_hidden"}}  # predates the option
    assert b.same_recipe(old, fresh, "vae")
    h = b.Harness(b.parse(["--data", "digits", "--out", str(tmp_path / "o2"), "--runs-dir", str(runs)]), [])
    h.budgets = [0.05, 0.1, 0.2]
    assert h.shorter_run("vae-c", "vae", ["lr_decay_start=1"], 0.2) == (runs / "vae-c_0p1min").resolve()
    cfg = runs / "vae-c_0p1min" / "config.json"
    cfg.write_text(json.dumps({**long_, "train": {**long_["train"], "lr_decay_start": 0.5}}))
    assert h.shorter_run("vae-c", "vae", ["lr_decay_start=1"], 0.2) is None


def test_benchmarks_md_quotes_the_budget_table():
    """BENCHMARKS.md opens with the short table of the committed budget.md (benchmarks/sync_budget_table.py)."""
    spec = importlib.util.spec_from_file_location("sync", ROOT / "benchmarks" / "sync_budget_table.py")
    sync = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sync)
    table = sync.short_table((ROOT / "benchmarks" / "results" / "budget_mnist" / "budget.md").read_text())
    assert table.count("\n") >= 5 and table in (ROOT / "BENCHMARKS.md").read_text()


def test_the_samples_sheet_places_each_finished_cell_and_marks_the_rest(tmp_path):
    from PIL import Image
    budget = load_budget()
    cells = {}
    for fam, minutes, status, colour in (("vae", 5.0, "finished", 40), ("vae", 15.0, "running", 90),
                                         ("pythae-vae", 5.0, "finished", 160)):
        run = tmp_path / f"{fam}_{minutes:g}"
        run.mkdir()
        Image.new("L", (100, 100), colour).save(run / "samples.png")
        (run / "config.json").write_text(json.dumps({"status": status}))
        cells[f"{fam}@{minutes:g}"] = {"family": fam, "minutes": minutes, "run": str(run)}
    # a finished cell whose run folder is gone (trained on another machine): a frame that says so
    cells["gan@5"] = {"family": "gan", "minutes": 5.0, "run": str(tmp_path / "elsewhere"), "done": True}
    out = budget.samples_sheet({"cells": cells}, tmp_path / "samples.png", width=120)
    im = Image.open(out).convert("L")
    left, top, pad, w = 150, 28, 6, 120  # the sheet's layout: label band, header band, gaps, cell width
    at = lambda row, col: im.getpixel((left + col * (w + pad) + w // 2, top + row * (w + pad) + 10))  # noqa: E731
    edge = lambda row, col: im.getpixel((left + col * (w + pad), top + row * (w + pad) + w // 2))  # noqa: E731
    assert im.size == (left + 2 * (w + pad), top + 3 * (w + pad))
    assert at(0, 0) == 40    # vae after 5 minutes
    assert at(1, 0) == 160   # the anchor's row below it
    assert at(0, 1) == 255   # the 15-minute run is still training: its old picture is left out
    assert at(1, 1) == 255 and edge(1, 1) == 255   # no cell at all: no frame
    assert edge(0, 1) < 255 and edge(2, 0) < 255 and at(2, 0) == 255   # framed: training, and a run elsewhere
    assert budget.samples_sheet({"cells": {}}, tmp_path / "none.png") is None


def test_two_harnesses_sharing_an_out_keep_each_others_cells(tmp_path):
    """Two invocations (other rows, one core each) write one budget.json: each save keeps the cells the other wrote."""
    b = load_budget()
    argv = ["--data", "digits", "--out", str(tmp_path / "out"), "--runs-dir", str(tmp_path / "runs"), "--resume"]
    argv2 = argv + ["--jobs", "1"]
    one, two = b.Harness(b.parse(argv), argv), b.Harness(b.parse(argv2), argv2)
    for h, cid in ((one, "vae@1"), (two, "ae@1")):
        h.mine.add(cid)
        h.state["cells"][cid] = {"family": cid.split("@")[0], "minutes": 1.0, "metrics": {}, "done": True}
    one.save()
    two.save()
    one.state["cells"]["vae@1"]["steps"] = 7     # one's own cell changes; two's stays as two wrote it
    one.save()
    cells = json.loads((tmp_path / "out" / "budget.json").read_text())["cells"]
    assert set(cells) == {"vae@1", "ae@1"} and cells["vae@1"]["steps"] == 7
    assert len(json.loads((tmp_path / "out" / "budget.json").read_text())["commands"]) == 2
