#!/bin/sh
# The pilot of issue 17 on this (AVX2-only, shared) machine: EDM and flow matching, 300 steps each (same UNet,
# batch 32, fp32, same per-step cost), Inception FID (fp32) at N = 500 with 35 network calls (Heun) against a seeded
# 1,000-image train reference; then the better of the two continues (resumable, checkpoint every 250 steps):
#   OMP_NUM_THREADS=1 nohup taskset -c 1 sh benchmarks/diffusion_pilot.sh > logs/diffusion_pilot.log 2>&1 &
# (WAIT_PID: a process to wait for first.)
set -e
if [ -n "$WAIT_PID" ]; then while kill -0 "$WAIT_PID" 2>/dev/null; do sleep 5; done; fi
B="env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/diffusion_objectives.py"
STEPS=${STEPS:-300}
EV="--ref-n 1000 --name diffusion_pilot"
$B train --objective edm --steps $STEPS --out runs/diffusion_pilot_edm
$B train --objective flow --steps $STEPS --out runs/diffusion_pilot_flow
$B eval --run runs/diffusion_pilot_edm --rows heun-35:500 $EV
$B eval --run runs/diffusion_pilot_flow --rows heun-35:500 $EV
WIN=$(.venv/bin/python -c "
import json; r = json.load(open('benchmarks/results/diffusion_pilot.json'))['rows']
f = {x['objective']: x['inception_fid'] for x in r if x['n'] == 500 and x['network_calls'] == 35}
print(min(('edm', 'flow'), key=f.get))")
echo "WINNER $WIN"
$B train --objective $WIN --steps ${LONG_STEPS:-7800} --out runs/diffusion_pilot_$WIN
echo PILOT DONE
