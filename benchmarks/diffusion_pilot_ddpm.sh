#!/bin/sh
# The DDPM row of the pilot (benchmarks/diffusion_pilot.sh): the same UNet, batch 32, fp32, 300 steps, then
# Inception FID (fp32) at N = 500 with 35 network calls (DPM-Solver++(2M), DDPM's best few-step sampler here) against
# the same seeded 1,000-image train reference.
#   OMP_NUM_THREADS=1 nohup taskset -c 1 sh benchmarks/diffusion_pilot_ddpm.sh > logs/diffusion_pilot_ddpm.log 2>&1 &
set -e
B="env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_objectives.py"
$B train --objective ddpm --steps ${STEPS:-300} --out runs/diffusion_pilot_ddpm
$B eval --run runs/diffusion_pilot_ddpm --rows dpm++2m-35:500 --ref-n 1000 --name diffusion_pilot
echo DDPM PILOT DONE
