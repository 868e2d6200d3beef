# impuTMAE pipeline: GDC (or a mirror, or your own matrices) -> verified files -> tiles and omics matrices
# -> multimodal MAE pretraining -> survival fine-tuning -> Tables 2-4, figures and an HTML report.
#
#   snakemake --cores 2                                   # the real job (config.yaml)
#   snakemake --cores 2 --configfile config.demo.yaml     # the embedded demo cohort (merged over config.yaml)
#   snakemake --profile slurm                             # on a Slurm cluster
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


include: "workflow/rules/common.smk"


wildcard_constraints:
    cohort="|".join(COHORTS),
    fold=r"\d+",


rule all:
    input:
        all_targets,
    default_target: True


include: "workflow/rules/demo.smk"
include: "workflow/rules/gdc.smk"
include: "workflow/rules/omics.smk"
include: "workflow/rules/wsi.smk"
include: "workflow/rules/pretrain.smk"


include: "workflow/rules/finetune.smk"
include: "workflow/rules/report.smk"
