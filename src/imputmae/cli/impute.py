"""``imputmae impute``: new patients' missing modalities reconstructed in the original feature space
(:func:`imputmae.finetune.impute_patients`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.files import atomic_write
from imputmae.modalities import is_image
from imputmae.cli._survival_io import _load_model_and_inputs, add_model_input_arguments

log = logging.getLogger("imputmae.survival")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("impute", help="reconstruct new patients' missing modalities in the original feature space")
    add_model_input_arguments(p, "a folder: {rna,dnam}.parquet of the imputed omics, wsi/<patient>.npy per "
                                 "imputed slide")
    p.set_defaults(func=_impute)



def _save_npy(path: Path, array) -> None:
    import numpy as np

    with open(path, "wb") as fh:  # a file object: np.save would append ".npy" to the temporary name
        np.save(fh, array)


def _impute(args: argparse.Namespace) -> int:
    from imputmae.finetune import impute_patients, imputed_tables

    _, mae, _, normalizers, inputs = _load_model_and_inputs(args)
    tables = imputed_tables(impute_patients(mae, inputs), normalizers)
    out = Path(args.out)
    for m, t in tables.items():
        if is_image(m):
            for p, tiles in t.items():
                atomic_write(out / "wsi" / f"{p}.npy", lambda f, tiles=tiles: _save_npy(f, tiles))
        else:
            atomic_write(out / f"{m}.parquet", lambda f, t=t: t.to_parquet(f))
        log.info("imputed %s for %d patients", m, len(t))
    if not tables:
        log.info("nothing to impute: every patient has every modality")
    return 0
