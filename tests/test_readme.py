"""The README's code runs: every ```python block and every command of every ```bash block, in order, on tiny settings.

Commands run in-process through `dgm.cli.main(shlex.split(line))`, in a temporary folder, with `$DGM_DATA` pointing at
the shared data folder beside the checkout (real MNIST, Fashion-MNIST, USPS). What is shortened, and why:

| in the README                         | here                   | why                                      |
|---------------------------------------|------------------------|------------------------------------------|
| `--steps N`, `steps=N` (N > 20)       | 20 steps               | training speed is not what is tested     |
| `--epochs X`                          | `--steps 20`           | same                                     |
| `--minutes X`, `--set minutes=X`      | 0.01 CPU-minutes       | same                                     |
| `dgm train` with no length            | `--steps 20` added     | one epoch of MNIST is minutes            |
| `--k N`, `k=N` (IWAE samples)         | 10                     | k = 5000 costs seconds per image         |
| `-n N` / `--n N` (N > 200)            | 200                    | sample and test-set sizes                |
| `dgm evaluate` without `--n` / `--k`  | `--n 200 --k 10` added | the defaults are 10,000 images, k = 5000 |

Skipped lines, each for its reason (SKIP below): `make ...` (sets up a venv), `pip install ...` (network),
`torchrun ...` (starts processes for data-parallel training), `dgm serve ...` (a server that runs until stopped). A
block whose fence follows `<!-- readme-test: skip (reason) -->` is skipped with that reason. Lines naming a dataset
from the shared folder are skipped, saying so, when that folder is absent.
"""
from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_STEPS, TINY_K, TINY_N, TINY_MINUTES = 20, 10, 200, "0.01"
MARK = re.compile(r"<!--\s*readme-test:\s*skip\s*\((.+)\)\s*-->")
SKIP = {  # first words of a command line -> why it is not run here
    ("make",): "make sets up .venv and installs packages",
    ("pip",): "pip install needs the network",
    ("torchrun",): "torchrun starts several processes (data-parallel training is tested in tests/test_train.py)",
    ("dgm", "serve"): "dgm serve runs a server until it is stopped (tested in tests/test_serve.py)",
}
SHARED_SETS = ("mnist", "fashion-mnist", "usps")


@dataclass
class Block:
    lang: str
    line: int          # 1-based line of the opening fence
    code: str
    skip: str | None   # the reason from a readme-test marker

    @property
    def id(self) -> str:
        return f"{self.lang}-line{self.line}"


def readme_blocks(text: str) -> list[Block]:
    """Every ```python and ```bash block, with the skip reason of a marker on the line before its fence."""
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        fence = lines[i].strip()
        if fence.startswith("```") and fence[3:].strip() in ("python", "bash"):
            prev = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            m = MARK.search(prev)
            j = next(k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("```"))
            out.append(Block(fence[3:].strip(), i + 1, "\n".join(lines[i + 1:j]), m.group(1) if m else None))
            i = j
        elif fence.startswith("```"):  # a block in another language (or none): step over it
            i = next(k for k in range(i + 1, len(lines)) if lines[k].strip().startswith("```"))
        i += 1
    return out


def commands(code: str) -> list[list[str]]:
    """A bash block's command lines as argument lists (comments dropped, backslash continuations joined)."""
    joined = re.sub(r"\\\n", " ", code)
    return [args for ln in joined.splitlines() if (args := shlex.split(ln, comments=True))]


def skip_reason(args: list[str]) -> str | None:
    for head, why in SKIP.items():
        if tuple(args[:len(head)]) == head:
            return why
    return None


def _value(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args and args.index(flag) + 1 < len(args) else None


def tiny(args: list[str]) -> list[str]:
    """The command with its long options shortened as the module docstring's table says."""
    out = list(args)
    for i, a in enumerate(out[:-1]):
        nxt = out[i + 1]
        if a == "--steps" and int(nxt) > TINY_STEPS:
            out[i + 1] = str(TINY_STEPS)
        elif a in ("--k",):
            out[i + 1] = str(TINY_K)
        elif a in ("-n", "--n", "--nll-n") and int(nxt) > TINY_N:
            out[i + 1] = str(TINY_N)
        elif a == "--minutes":
            out[i + 1] = TINY_MINUTES
        elif a == "--set" and nxt.startswith("minutes="):
            out[i + 1] = f"minutes={TINY_MINUTES}"
    if "--epochs" in out:
        i = out.index("--epochs")
        out[i:i + 2] = ["--steps", str(TINY_STEPS)]
    if out[:2] == ["dgm", "train"] and "--resume" not in out and not (
            {"--steps", "--minutes"} & set(out) or any(a.startswith("minutes=") for a in out)):
        out += ["--steps", str(TINY_STEPS)]
    if out[:2] == ["dgm", "evaluate"]:
        out += [] if "--n" in out else ["--n", str(TINY_N)]
        out += [] if "--k" in out else ["--k", str(TINY_K)]
    return out


def tiny_python(code: str) -> str:
    code = re.sub(r"\bsteps=(\d+)", lambda m: f"steps={min(int(m.group(1)), TINY_STEPS)}", code)
    return re.sub(r"\bk=(\d+)", f"k={TINY_K}", code)


def needs_shared_data(args: list[str]) -> bool:
    return _value(args, "--data") in SHARED_SETS or any(f"unpaired:{s}" in a for a in args for s in SHARED_SETS)


BLOCKS = readme_blocks(README.read_text())


# -- the runner's own rules ------------------------------------------------------------------------------------
def test_the_runner_finds_the_readmes_blocks_and_their_markers():
    langs = [b.lang for b in BLOCKS]
    assert langs.count("python") >= 2 and langs.count("bash") >= 3
    assert all(b.skip is None or b.skip.strip() for b in BLOCKS)
    marked = readme_blocks("<!-- readme-test: skip (needs a GPU) -->\n```python\nprint(1)\n```\n```bash\nls\n```\n"
                           "```\nplain\n```\n```python\nx = 1\n```\n")
    assert [(b.lang, b.skip) for b in marked] == [("python", "needs a GPU"), ("bash", None), ("python", None)]
    assert marked[2].code == "x = 1" and marked[2].line == 11


def test_long_options_become_tiny_and_skips_are_by_pattern():
    assert tiny(["dgm", "train", "vae", "--data", "mnist", "--epochs", "10"])[-2:] == ["--steps", "20"]
    assert tiny(["dgm", "train", "vae"]) == ["dgm", "train", "vae", "--steps", "20"]
    assert tiny(["dgm", "train", "vae", "--out", "r", "--resume"]) == ["dgm", "train", "vae", "--out", "r", "--resume"]
    assert "--steps" not in tiny(["dgm", "train", "vae", "--set", "minutes=5"])
    assert tiny(["dgm", "train", "vae", "--set", "minutes=5"])[-1] == "minutes=0.01"
    assert tiny(["dgm", "evaluate", "r", "--k", "5000"]) == ["dgm", "evaluate", "r", "--k", "10", "--n", "200"]
    assert tiny(["dgm", "latent", "r", "-n", "10000"])[-1] == "200"
    assert tiny_python('train("vae", steps=1500)\nm.nll(x, k=5000)') == 'train("vae", steps=20)\nm.nll(x, k=10)'
    assert commands("dgm a \\\n  --b 1   # note\n\n# only a comment\nmake demo") == [["dgm", "a", "--b", "1"],
                                                                                   ["make", "demo"]]
    assert skip_reason(["dgm", "serve", "runs"]) and skip_reason(["pip", "install", "x"])
    assert skip_reason(["dgm", "train", "vae"]) is None
    assert needs_shared_data(["dgm", "train", "vae", "--data", "mnist"])
    assert not needs_shared_data(["dgm", "train", "vae", "--data", "mnist-mini"])


# -- the README's blocks ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("readme")


@pytest.mark.parametrize("block", BLOCKS, ids=[b.id for b in BLOCKS])
def test_readme_block_runs(block, workdir, monkeypatch, capsys):
    if block.skip:
        pytest.skip(f"README line {block.line}: {block.skip}")
    monkeypatch.chdir(workdir)
    if (SHARED_DATA / "mnist").is_dir():
        monkeypatch.setenv("DGM_DATA", str(SHARED_DATA))
    if block.lang == "python":
        exec(compile(tiny_python(block.code), f"README.md:{block.line}", "exec"), {"__name__": "__readme__"})
        return
    from dgm.cli import main
    ran, skipped = 0, []
    for args in commands(block.code):
        why = skip_reason(args)
        if why is None and needs_shared_data(args) and not (SHARED_DATA / "mnist").is_dir():
            why = f"needs {SHARED_DATA} (real MNIST / Fashion-MNIST / USPS)"
        if why:
            skipped.append(f"{' '.join(args[:3])}: {why}")
            continue
        assert args[0] == "dgm", f"README line {block.line}: not a dgm command and no skip rule: {' '.join(args)}"
        line = tiny(args)
        try:
            code = main(line[1:])
        except SystemExit as e:
            code = e.code
        assert code == 0, f"README line {block.line}: `{' '.join(line)}` exited with {code}:\n" \
                          f"{capsys.readouterr().err[-2000:]}"
        ran += 1
    if not ran:
        pytest.skip(f"README line {block.line}: every command skipped: " + "; ".join(skipped))
