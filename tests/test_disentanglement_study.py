"""benchmarks/disentanglement.py --study: the divergence and KL-peak flags, the table of medians from cell records,
and the model names it accepts (the study's design by default, probes only when named)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def study(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("disentanglement_bench", ROOT / "benchmarks" / "disentanglement.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "RESULTS", tmp_path / "results")
    return mod


def test_divergence_is_zero_for_a_falling_curve_and_the_rise_for_a_rising_one(study):
    falling = [[i, 200.0 - i] for i in range(100)]
    assert study.divergence(falling) == 0.0
    rising = [[i, 100.0] for i in range(50)] + [[50 + i, 150.0] for i in range(50)]   # +50 nats, held to the end
    assert study.divergence(rising) == pytest.approx(50.0)


def test_kl_peak_skips_the_first_tenth_and_catches_a_later_explosion(study):
    early = [[i, 1000.0 if i < 5 else 10.0] for i in range(100)]     # the fresh encoder's transient
    assert study.kl_peak(early) == 10.0
    late = [[i, 218560.0 if i == 43 else 10.0] for i in range(100)]
    assert study.kl_peak(late) == 218560.0


def _cell(model, seed, mig):
    return {"model": model, "seed": seed, "beta_vae_score": 0.8, "factor_vae_score": 0.5, "mig": mig,
            "dci_disentanglement": 0.2, "sap_continuous": 0.1, "train_cpu_minutes": 5.0,
            "recon": [[i, 100.0 - i] for i in range(30)], "kl": [[i, 10.0] for i in range(30)]}


def test_report_writes_the_median_and_quartiles_of_the_seeds_done(study, tmp_path):
    records = study.RESULTS / "disentanglement_study_t_cells"
    records.mkdir(parents=True)
    for seed, mig in enumerate([0.1, 0.3, 0.2]):
        (records / f"beta-tcvae-6_s{seed}.json").write_text(json.dumps(_cell("beta-tcvae-6", seed, mig)))
    assert study.main(["--study", "--report", "--tag", "_t", "--models", "beta-tcvae-6",
                       "--runs", str(tmp_path / "runs")]) == 0
    md = (study.RESULTS / "disentanglement_study_t.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| beta-tcvae-6 |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[1] == "3" and cells[4] == "0.200 [0.15-0.25]"   # MIG: median 0.2, quartiles 0.15 and 0.25
    summary = json.loads((study.RESULTS / "disentanglement_study_t.json").read_text())
    assert "probes" not in json.dumps(summary.get("protocol", {}))
    assert (study.RESULTS / "disentanglement_study_t.png").is_file()


def test_probes_are_accepted_by_name_and_noted_in_the_protocol(study, tmp_path, capsys):
    assert "beta-tcvae-6-b256" not in study.STUDY       # not part of the default design
    assert study.main(["--study", "--report", "--tag", "_p", "--models", "beta-tcvae-6-b256",
                       "--runs", str(tmp_path / "runs")]) == 0
    assert "no finished cells" in capsys.readouterr().out

    class A:
        steps, precision, models, capacity_steps = 100, "fp32", "beta-tcvae-6-b256", None
    protocol = study.study_protocol(A)
    assert protocol["probes"] == {"beta-tcvae-6-b256": {"beta": "6", "batch_size": "256"}}
    assert "two thirds" in protocol["capacity"] and "unless a probe's options" in protocol["net"]
    A.capacity_steps, A.models = 40, "vae"
    protocol = study.study_protocol(A)
    assert "first 40 steps" in protocol["capacity"] and "probes" not in protocol and "unless" not in protocol["net"]


def test_an_unknown_study_model_is_refused_before_anything_runs(study, tmp_path, capsys):
    with pytest.raises(SystemExit):
        study.main(["--study", "--models", "beta-tcvae-99", "--runs", str(tmp_path / "runs")])
    assert "unknown study model" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
