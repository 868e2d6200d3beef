"""``imputmae predict``: risk and survival curves of new patients from a fine-tuned model
(:func:`imputmae.finetune.predict_patients`)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from imputmae.cli import UserError
from imputmae.files import atomic_write
from imputmae.cli._survival_io import _load_model_and_inputs, add_model_input_arguments

log = logging.getLogger("imputmae.survival")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("predict", help="risk and survival curve for new patients from whatever modalities they have")
    add_model_input_arguments(p, "a .parquet or .csv file: patient, risk, high_risk, imputed_*, S(t)")
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


