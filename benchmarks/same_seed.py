"""Train one tiny run per family with a fixed seed and print the sha256 of its weights and every figure, so a refactor
can show "same seed -> same bits": run it before and after, compare. Usage: python benchmarks/same_seed.py OUT [families]"""
import hashlib, json, sys, warnings
from pathlib import Path
warnings.filterwarnings("ignore")
from dgm.tasks import train
out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
runs = {
  "ae": ("ae", "digits", {"latent_dim": 2}),
  "vae": ("vae", "digits", {"latent_dim": 4}),
  "beta-vae": ("beta-vae", "digits", {"latent_dim": 4, "conv_channels": "8,16"}),
  "gan": ("gan", "digits", {"width": 8, "latent_dim": 8}),
  "diffusion": ("diffusion", "digits", {"base_channels": 8, "channel_mults": "1,2", "timesteps": 50, "sample_steps": 5}),
  "cyclegan": ("cyclegan", "unpaired:digits,usps", {"gen_width": 4, "gen_blocks": 1, "disc_width": 4}),
}
res = {}
for name, (fam, data, ov) in runs.items():
    if len(sys.argv) > 2 and name not in sys.argv[2].split(","):
        continue
    r = train(fam, data, steps=30, out=out / name, overrides={**ov, "log_every": 5, "ckpt_every": 30},
              image_size=16, progress=False, data_dir=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    res[name] = {p.relative_to(r).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()[:12]
                 for p in sorted(r.rglob("*")) if p.suffix in (".png", ".gif", ".safetensors")}
print(json.dumps(res, indent=1))
