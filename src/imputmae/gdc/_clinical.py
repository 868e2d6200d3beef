"""Survival labels from GDC /cases: one row per patient with a usable label, the rest to a QC table."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from imputmae.gdc._filters import CASE_FIELDS, case_filters, field_values
from imputmae.gdc._transport import Transport, _with_retries, iter_hits

log = logging.getLogger(__name__)

CLINICAL_COLUMNS: tuple[str, ...] = ("patient", "project_id", "case_id", "vital_status", "time", "event")
QC_COLUMNS: tuple[str, ...] = ("patient", "project_id", "case_id", "vital_status", "days_to_death",
                               "days_to_follow_up", "reason")


# ---------------------------------------------------------------------------------------------------- clinical


def _numbers(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            x = float(v)
        except (TypeError, ValueError):
            continue
        if not math.isnan(x):
            out.append(x)
    return out


def clinical_table(cases: Iterable[Mapping[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Survival labels from /cases hits.

    time (days) = ``demographic.days_to_death`` for the dead (event 1), else the largest of
    ``diagnoses[].days_to_last_follow_up`` and ``follow_ups[].days_to_follow_up`` (event 0). A patient is dropped,
    with that reason, for: ``missing vital status`` (absent, Not Reported, Unknown), ``dead without days_to_death``,
    ``no follow-up time`` (alive), ``negative time``, ``duplicate patient`` (a second case with the same barcode).

    Returns:
        (clinical rows with :data:`CLINICAL_COLUMNS` sorted by patient, dropped rows with :data:`QC_COLUMNS`).
    """
    keep, drop = [], []
    seen: set[str] = set()
    for c in cases:
        patient = str(c.get("submitter_id") or "")[:12]
        demo = c.get("demographic") or {}
        status = demo.get("vital_status")
        death = _numbers([demo.get("days_to_death")])
        follow = _numbers(field_values(c, "diagnoses.days_to_last_follow_up")
                          + field_values(c, "follow_ups.days_to_follow_up"))
        row = {"patient": patient, "project_id": (c.get("project") or {}).get("project_id"),
               "case_id": c.get("case_id") or c.get("id"), "vital_status": status,
               "days_to_death": death[0] if death else None, "days_to_follow_up": max(follow) if follow else None}
        reason = None
        if patient in seen:
            reason = "duplicate patient"
        elif status not in ("Alive", "Dead"):
            reason = "missing vital status"
        elif status == "Dead" and not death:
            reason = "dead without days_to_death"
        elif status == "Alive" and not follow:
            reason = "no follow-up time"
        seen.add(patient)
        if reason is None:
            time_ = death[0] if status == "Dead" else max(follow)
            if time_ < 0:
                reason = "negative time"
        if reason:
            drop.append({**row, "reason": reason})
        else:
            keep.append({**row, "time": float(time_), "event": int(status == "Dead")})
    clinical = pd.DataFrame(keep, columns=list(CLINICAL_COLUMNS)).sort_values("patient").reset_index(drop=True)
    clinical["time"] = clinical["time"].astype("float64")
    clinical["event"] = clinical["event"].astype("int8")
    qc = pd.DataFrame(drop, columns=list(QC_COLUMNS)).sort_values(["reason", "patient"]).reset_index(drop=True)
    return clinical, qc


def fetch_clinical(transport: Transport, projects: Sequence[str], page_size: int = 500, retries: int = 8,
                   backoff_s: float = 1.0) -> tuple[pd.DataFrame, pd.DataFrame, dict[str, str]]:
    """:func:`clinical_table` over every /cases hit of ``projects``; returns (clinical, qc, metadata)."""
    status = _with_retries("GET /status", transport.status, retries, backoff_s)
    hits = iter_hits(transport, "cases", case_filters(projects), CASE_FIELDS, page_size, retries=retries,
                     backoff_s=backoff_s)
    clinical, qc = clinical_table(hits)
    for reason, n in qc["reason"].value_counts().sort_index().items():
        log.warning("clinical: %d patient(s) dropped: %s (see the QC table)", n, reason)
    log.info("clinical: %d patients kept (%d events), %d dropped", len(clinical), int(clinical["event"].sum()), len(qc))
    meta = {"gdc_data_release": str(status.get("data_release", "unknown")), "gdc_source": transport.source,
            "projects": ",".join(projects)}
    return clinical, qc, meta
