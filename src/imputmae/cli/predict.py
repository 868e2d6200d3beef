"""``imputmae predict``: risk and survival curves of new patients from a fine-tuned model
(:func:`imputmae.finetune.predict_patients`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.cli._survival_io import _load_model_and_inputs

log = logging.getLogger("imputmae.survival")


def register(sub: argparse._SubParsersAction) -> None:
    for name, helptext in [("predict", "risk and survival curve for new patients from whatever modalities they have")]:
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--model", required=True, help="a fine-tuned model folder (model.pt) or file")
        p.add_argument("inputs", nargs="+", help="rna/dnam tables (.parquet/.csv/.tsv; prefix rna: or dnam: to "
                       "force the modality) and <patient>.npy tile files or folders of them")
        p.add_argument("--out", required=True, help="predict: a .parquet/.csv file; impute: a folder")
        p.set_defaults(func=_predict)



def _predict(args: argparse.Namespace) -> int:
    from imputmae.finetune import predict_patients

    model, mae, state, _, inputs = _load_model_and_inputs(args)
    if not inputs.patients():
        raise UserError("no patient in the inputs")
    out = predict_patients(model, mae, inputs, state)
    path = Path(args.out)
    cuts = out.attrs["cuts_days"]
    out = out.rename(columns={f"s_{k}": f"S({c:.0f}d)" for k, c in enumerate(cuts)})
    atomic_write(path, (lambda t: out.to_csv(t, index=False)) if path.suffix in (".csv", ".tsv")
            else (lambda t: out.to_parquet(t, index=False)))
    log.info("%d patients -> %s", len(out), path)
    return 0


