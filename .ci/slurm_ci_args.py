"""Print, one per line, the command-line options CI adds to `snakemake --profile slurm` (the profile file given).

Options given on the command line replace the profile's value of the same option as a whole, so the resource
options are the profile's own, with CI's changes merged in: demo-sized memory and runtime, and gpu=1 on pretraining
(the demo config asks for none) so that it is scheduled through the fake GPUs' GRES.
"""

import sys

import yaml

profile = yaml.safe_load(open(sys.argv[1]))
default = {**profile.get("default-resources", {}), "mem_mb": "1000 * attempt", "runtime": 30}
sets = {rule: dict(res) for rule, res in profile.get("set-resources", {}).items()}
# pretraining through the fake GPUs' GRES (one each, the demo's one thread: 8 CPUs per GPU would never schedule);
# fine-tuning as the demo config asks (no GPU): 60 short jobs would queue behind the two fake GPUs
sets.setdefault("pretrain", {}).update(gpu=1, cpus_per_gpu=1)
args = [
    "--slurm-status-command", "squeue",              # no slurmdbd on the CI cluster: sacct would never answer
    "--slurm-init-seconds-before-status-checks", "2",
    "--latency-wait", "5",                           # one local file system
    "--slurm-keep-successful-logs",                  # check_outputs.py reads them: every rule went through Slurm
    "--default-resources", *(f"{k}={v}" for k, v in default.items()),
    "--set-resources", *(f"{rule}:{k}={v}" for rule, res in sets.items() for k, v in res.items()),
]
print("\n".join(str(a) for a in args))
