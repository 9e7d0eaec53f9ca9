"""The speed comparison with pythae / diffusers: the dgm configs that reproduce their nets, the GEMM convolutions and
attention paths that make dgm fast (same results as the plain ones), and the benchmark runner's report."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dgm.models.diffusion import Diffusion, DiffusionConfig
from dgm.models.vae import VAE, VAEConfig
from dgm.nn.conv import GemmConv2d, GemmConvTranspose2d
from dgm.nn.unet import AttnBlock

ROOT = Path(__file__).resolve().parents[1]


def load_runner():
    spec = importlib.util.spec_from_file_location("compare_run", ROOT / "benchmarks" / "compare" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_pythae_mnist_nets_reproduced():
    run = load_runner()
    m = VAE(VAEConfig(**run.DGM_VAE_PYTHAE))
    enc = [type(l).__name__ for l in m.encoder.convs]
    assert enc.count("Conv2d") == 4 and enc.count("BatchNorm2d") == 4 and enc.count("ReLU") == 4
    assert [l.out_channels for l in m.encoder.convs if isinstance(l, nn.Conv2d)] == [128, 256, 512, 1024]
    assert [l.kernel_size for l in m.decoder.deconvs if isinstance(l, nn.ConvTranspose2d)] == [(3, 3)] * 3
    # pythae: 17,232,033 parameters; dgm's Gaussian likelihood adds one learned noise level.
    assert m.num_parameters() == 17_232_033 + 1
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    assert m.decoder(torch.randn(3, 16)).shape == (3, 1, 28, 28)
    assert torch.isfinite(m.loss((x, None))["loss"])


def test_default_conv_nets_unchanged():
    m = VAE(VAEConfig())
    assert m.num_parameters() == 1_673_729  # dgm's default conv VAE before the new options existed
    assert [type(l).__name__ for l in m.encoder.convs] == ["Conv2d", "SiLU", "Conv2d", "SiLU"]


def test_bad_conv_options():
    with pytest.raises(ValueError, match="conv_norm"):
        VAE(VAEConfig(conv_norm="layer"))
    with pytest.raises(ValueError, match="conv_kernel"):
        VAE(VAEConfig(conv_kernel=5))
    with pytest.raises(ValueError, match="shrink"):
        VAE(VAEConfig(conv_kernel=4, conv_channels=(8, 8, 8, 8, 8, 8)))


@pytest.mark.parametrize("cin,cout,k,s,p,op,size", [(3, 5, 4, 2, 1, 0, 7), (4, 6, 3, 2, 1, 1, 4), (2, 3, 3, 1, 1, 0, 5),
                                                    (8, 4, 3, 2, 1, 0, 3),
                                                    # one output position (the window path): 2x3 and 1x2 inputs
                                                    (6, 5, 4, 2, 1, 0, 2), (5, 7, 3, 2, 1, 0, 1)])
def test_gemm_convs_match_native(cin, cout, k, s, p, op, size):
    torch.manual_seed(0)
    pairs = [(nn.Conv2d(cin, cout, k, s, p), GemmConv2d(cin, cout, k, s, p)),
             (nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=op),
              GemmConvTranspose2d(cin, cout, k, s, p, output_padding=op))]
    for native, gemm in pairs:
        gemm.load_state_dict(native.state_dict())
        x1 = torch.randn(2, cin, size, size + 1, requires_grad=True)
        x2 = x1.detach().clone().requires_grad_()
        y1, y2 = native(x1), gemm(x2)
        assert y1.shape == y2.shape
        torch.testing.assert_close(y2, y1, atol=1e-5, rtol=1e-5)
        y1.square().sum().backward()
        y2.square().sum().backward()
        torch.testing.assert_close(x2.grad, x1.grad, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(gemm.weight.grad, native.weight.grad, atol=1e-4, rtol=1e-4)


def test_conv_gemm_vae_same_function():
    run = load_runner()
    a = VAE(VAEConfig(**run.DGM_VAE_PYTHAE)).eval()
    b = VAE(VAEConfig(**run.DGM_VAE_PYTHAE, conv_gemm=True)).eval()
    b.load_state_dict(a.state_dict())
    assert any(isinstance(l, GemmConv2d) for l in b.encoder.convs)
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(b.encoder(x), a.encoder(x), atol=1e-4, rtol=1e-4)
    z = torch.randn(2, 16)
    torch.testing.assert_close(b.decoder(z), a.decoder(z), atol=1e-4, rtol=1e-4)


def test_attention_paths_agree():
    """The chunked explicit bf16 path (training and sampling) and the SDPA path compute the same attention."""
    from dgm.nn.unet import attention
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 2, 3, 36, 8).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, v)
    for chunk in (36 * 36, 3 * 36 * 36, 1 << 20):  # one (image, head) pair per chunk, a ragged last chunk, one chunk
        y = attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), chunk_scores=chunk)
        assert y.dtype == torch.bfloat16 and y.shape == ref.shape
        torch.testing.assert_close(y.float(), ref, atol=0.03, rtol=0.03)
    m = AttnBlock(32, heads=4)
    nn.init.normal_(m.out.weight, std=0.2)
    x = torch.randn(2, 32, 6, 6)
    with torch.no_grad():
        ref = m(x)  # SDPA (fp32)
    for grad in (True, False):
        with torch.autocast("cpu", dtype=torch.bfloat16), torch.set_grad_enabled(grad):
            y = m(x)
        torch.testing.assert_close(y.float(), ref, atol=0.05, rtol=0.05)


def test_diffusers_unet_shape_reproduced():
    run = load_runner()
    m = Diffusion(DiffusionConfig(**run.DGM_UNET_DIFFUSERS))
    assert m.num_parameters() == 1_112_801  # diffusers' UNet2DModel with the issue's config has the same count
    attn = [i for i, blk in enumerate(m.net.down) if isinstance(blk, nn.ModuleList) and len(blk) > 1]
    assert len(attn) == 1  # attention only at the middle (14x14) level on the way down, as AttnDownBlock2D


def test_runner_report_and_idle_wait(tmp_path):
    run = load_runner()
    load, waited = run.wait_idle(limit=1e9, timeout=0)
    assert waited < 5
    res = [{"task": "peak", "variant": "-", "round": r, "peak_fp32": 100e9, "peak_bf16": 300e9, "load": 0.1}
           for r in range(3)]
    for r in range(3):
        res.append({"task": "vae-pythae", "variant": "-", "round": r, "img_s": 10.0 + r, "params": 10,
                    "flops_per_img": 1e9, "precision": "fp32", "load": 0.2})
        res.append({"task": "vae-dgm", "variant": "bf16-gemm", "round": r, "img_s": 30.0 + r, "params": 10,
                    "flops_per_img": 1e9, "precision": "bf16", "load": 0.3})
    meta = {"date": "d", "machine": "m", "torch": "t", "threads": 1}
    text = run.report(res, meta, tmp_path / "out")
    assert "| dgm VAE train | bf16-gemm | 31.0 | 2.82x (2.67-3.0)" in text
    assert "10% (bf16)" in text  # 31 img/s * 1 GFLOP / 300 GFLOP/s
    assert (tmp_path / "out.json").is_file() and (tmp_path / "out.md").is_file()


ANCHOR_PY = ROOT / "benchmarks" / "compare" / ".venv-anchors" / "bin" / "python"


@pytest.mark.slow
@pytest.mark.skipif(not ANCHOR_PY.is_file(), reason="needs benchmarks/compare's environment (bash "
                                                     "benchmarks/compare/setup.sh)")
def test_diffusers_anchor_resumes_exactly(tmp_path):
    """A diffusers anchor training killed after a checkpoint and run again ends with the weights of an uninterrupted
    run: the budget harness can stop a session mid-anchor without losing it."""
    import os
    import subprocess
    import time
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def train(out, **kw):
        return subprocess.Popen([str(ANCHOR_PY), str(ROOT / "benchmarks" / "compare" / "budget_anchors.py"), "train",
                                 "--anchor", "diffusers-ddpm", "--minutes", "30", "--max-steps", "8", "--data",
                                 "digits", "--out", str(out), "--ckpt-cpu-seconds", "0"], env=env, cwd=ROOT, **kw)

    assert train(tmp_path / "a").wait() == 0
    p = train(tmp_path / "b")
    ckpt = tmp_path / "b" / "anchor_ckpt.pt"
    while not ckpt.is_file() and p.poll() is None:
        time.sleep(0.5)
    p.kill()
    p.wait()
    if not (tmp_path / "b" / "config.json").is_file():  # killed mid-run (not after the end): resume it
        assert train(tmp_path / "b", stdout=subprocess.PIPE, text=True).communicate()[0].count("resumed from") == 1
    a, b = (torch.load(d / "anchor_ckpt.pt", weights_only=True) for d in (tmp_path / "a", tmp_path / "b"))
    assert a["step"] == b["step"] == 8 and a["losses"] == b["losses"]
    assert all(torch.equal(a["unet"][k], b["unet"][k]) for k in a["unet"])
