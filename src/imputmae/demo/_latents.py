"""The simulated cohort: sites, latent factors, subtypes, survival times and censoring, risk shares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from imputmae.demo._helpers import _stream, _top_k
from imputmae.demo._params import (CLINICAL_FLAWS, DEFAULT_PARAMS, FACTORS, INTERACTION, MODALITY_FACTORS, PROJECTS,
                                   SUBTYPE_MODALITIES, DemoParams, ProjectSpec)


@dataclass(frozen=True)
class _Sites:
    """Per-site nuisance of one project: era, follow-up, missingness propensity and slide stain."""

    codes: tuple[str, ...]
    weights: np.ndarray       # [S] share of the project's patients
    year: np.ndarray          # [S] median diagnosis year
    follow_up: np.ndarray     # [S] loss-to-follow-up factor (times the project's mean)
    miss_dnam: np.ndarray     # [S] log-odds offsets
    miss_wsi: np.ndarray      # [S]


def _make_sites(project: str, spec: ProjectSpec, prm: DemoParams, seed: int) -> _Sites:
    rng = _stream(seed, "sites", project)
    s = len(spec.sites)
    w = 1 / np.arange(1, s + 1) ** prm.site_zipf
    return _Sites(codes=spec.sites, weights=w / w.sum(),
                  year=spec.diagnosis_year + rng.normal(0, prm.site_year_sd, s),
                  follow_up=np.exp(rng.normal(0, prm.site_follow_up_sd, s)),
                  miss_dnam=rng.normal(0, prm.missing_site_sd, s), miss_wsi=rng.normal(0, prm.missing_site_sd, s))


def _draw_latents(spec: ProjectSpec, sites: _Sites, prm: DemoParams, n: int, rng: np.random.Generator
                  ) -> dict[str, np.ndarray]:
    """Site, diagnosis year, subtype, factors z [n, 5] and the log-hazard's parts (without the baseline)."""
    site = rng.choice(len(sites.codes), n, p=sites.weights)
    year = np.clip(sites.year[site] + rng.normal(0, prm.patient_year_sd, n), prm.first_year,
                   prm.data_freeze_year - 0.3)
    prev = np.array([t.prevalence for t in spec.subtypes])
    subtype = rng.choice(len(spec.subtypes), n, p=prev / prev.sum())
    z = rng.standard_normal((n, len(FACTORS)))
    contrib = {f"contrib_{f}": spec.signal * prm.risk_weights[k] * z[:, k] for k, f in enumerate(FACTORS)}
    contrib["contrib_interaction"] = spec.signal * prm.interaction * z[:, INTERACTION[0]] * z[:, INTERACTION[1]]
    contrib["contrib_subtype"] = np.array([t.log_hr for t in spec.subtypes])[subtype]
    eta = sum(contrib.values())
    admin = (prm.data_freeze_year - year) * 365.25
    loss = rng.exponential(sites.follow_up[site])  # times the project's loss-to-follow-up mean (_calibrate)
    return dict(site=site, year=year, subtype=subtype, z=z, eta=eta, admin=admin, loss=loss, **contrib)


def _censor_days(lat: Mapping[str, np.ndarray], loss_mean: float) -> np.ndarray:
    return np.maximum(np.minimum(lat["admin"], loss_mean * lat["loss"]), 1.0)


def _calibrate(project: str, spec: ProjectSpec, sites: _Sites, prm: DemoParams, seed: int) -> tuple[float, float]:
    """The project's log baseline hazard and loss-to-follow-up mean (days), solved on 20,000 draws of its latents:
    the baseline so that the event times' median is ``spec.median_survival_days``, then the loss mean (bisection)
    so that the expected censored share, mean(exp(-exp(b + eta) C^k)), is ``spec.censored``."""
    mc = _draw_latents(spec, sites, prm, 20_000, _stream(seed, "calibrate", project))
    k, eta = prm.weibull_shape, mc["eta"]
    # T = (E / exp(b + eta))^(1/k), E ~ Exp(1): median(T)^k = exp(-b) median(E exp(-eta))
    e = _stream(seed, "calibrate-times", project).exponential(1.0, len(eta))
    b = float(np.log(np.median(e * np.exp(-eta)) / spec.median_survival_days**k))
    lo, hi = np.log(1.0), np.log(1e6)
    for _ in range(60):
        mid = (lo + hi) / 2
        censored = np.mean(np.exp(-np.exp(b + eta) * _censor_days(mc, float(np.exp(mid))) ** k))
        lo, hi = (lo, mid) if censored < spec.censored else (mid, hi)
    return b, float(np.exp((lo + hi) / 2))


def risk_shares(project: str, seed: int = 0, params: DemoParams = DEFAULT_PARAMS) -> dict[str, float]:
    """Share of the variance of a project's log-hazard that each modality carries: R^2 of E[risk | what the modality
    shows] (its factors, and the subtype for RNA and DNAm), by least squares on 20,000 draws. The interaction term
    has mean zero given either of its factors, so only "all" (which is 1.0) explains it."""
    spec = PROJECTS[project]
    mc = _draw_latents(spec, _make_sites(project, spec, params, seed), params, 20_000,
                       _stream(seed, "shares", project))
    y = mc["eta"] - mc["eta"].mean()
    out = {}
    for m, ks in MODALITY_FACTORS.items():
        x = [mc["z"][:, list(ks)]]
        if m in SUBTYPE_MODALITIES:
            x.append(np.eye(len(spec.subtypes))[mc["subtype"]])
        x = np.hstack([np.ones((len(y), 1)), *x])
        beta, *_ = np.linalg.lstsq(x, y, rcond=None)
        out[m] = float(1 - ((y - x @ beta) ** 2).sum() / (y**2).sum())
    out["all"] = 1.0
    return out


def simulate_patients(n_patients: Mapping[str, int], seed: int = 0, params: DemoParams = DEFAULT_PARAMS
                      ) -> pd.DataFrame:
    """The cohort's patient table, without any file: one row per patient.

    Columns: patient (``DEMO-<site>-<nnnn>``), project_id, site, diagnosis_year, subtype, z0..z4, contrib_* (the
    log-hazard's parts; ``contrib_baseline`` is the project's), risk (their sum: the true log-hazard), time (observed
    days), event, has_rna, has_dnam, has_wsi, platform ("450"/"27"), clinical_flaw ("" or a named defect).
    """
    frames = []
    for project, n in n_patients.items():
        spec = PROJECTS[project]
        sites = _make_sites(project, spec, params, seed)
        base, loss_mean = _calibrate(project, spec, sites, params, seed)
        rng = _stream(seed, "patients", project)
        lat = _draw_latents(spec, sites, params, n, rng)
        risk = base + lat["eta"]
        t_event = (rng.exponential(1.0, n) / np.exp(risk)) ** (1 / params.weibull_shape)
        censor = _censor_days(lat, loss_mean)
        time = np.round(np.minimum(t_event, censor)).clip(1, None)
        event = (t_event <= censor).astype(int)
        has_rna = rng.random(n) >= params.rna_missing
        n_rna = int(has_rna.sum())
        # Missing DNAm / slide: exactly Table 2's share of the RNA patients, chosen by a site- and era-dependent
        # propensity (Gumbel top-k: sampling without replacement with probabilities ~ exp(propensity)).
        older = spec.diagnosis_year - lat["year"]
        avail = {}
        for m, rate, off in (("dnam", spec.dnam, sites.miss_dnam), ("wsi", spec.wsi, sites.miss_wsi)):
            keys = off[lat["site"]] + spec.missing_per_year * older + rng.gumbel(size=n)
            missing = np.zeros(n, bool)
            missing[has_rna] = _top_k(keys[has_rna], round((1 - rate) * n_rna))
            missing[~has_rna] = rng.random(int((~has_rna).sum())) >= rate
            avail[m] = ~missing
        # The earliest-diagnosed DNAm patients are on the 27k array only.
        n_dnam = int(avail["dnam"].sum())
        is_27k = np.zeros(n, bool)
        is_27k[avail["dnam"]] = _top_k(older[avail["dnam"]] + rng.normal(0, 1.0, n_dnam), round(spec.p_27k * n_dnam))
        # A clinical record the label step must drop, each for a named reason: exactly 1 - Table 2's clinical share.
        flawed = np.zeros(n, bool)
        flawed[has_rna] = _top_k(rng.random(n_rna), round((1 - spec.clinical) * n_rna))
        flaws = np.where(flawed, rng.choice(CLINICAL_FLAWS, n), "")
        counters: dict[int, int] = {}
        barcodes = []
        for s in lat["site"]:
            counters[s] = counters.get(s, 0) + 1
            barcodes.append(f"DEMO-{sites.codes[s]}-{counters[s]:04d}")
        frames.append(pd.DataFrame({
            "patient": barcodes, "project_id": project, "site": [sites.codes[s] for s in lat["site"]],
            "diagnosis_year": np.round(lat["year"], 2), "subtype": [spec.subtypes[k].name for k in lat["subtype"]],
            **{f"z{k}": lat["z"][:, k] for k in range(len(FACTORS))},
            **{c: lat[c] for c in lat if c.startswith("contrib_")}, "contrib_baseline": base,
            "risk": risk, "time": time, "event": event, "censor_days": np.round(censor), "has_rna": has_rna, "has_dnam": avail["dnam"],
            "has_wsi": avail["wsi"], "platform": np.where(is_27k, "27", "450"), "clinical_flaw": flaws,
        }))
    return pd.concat(frames, ignore_index=True)


def _case_hit(p: Any, rng: np.random.Generator) -> dict[str, Any]:
    """A /cases hit with the fields the pipeline asks for, nested as the API nests them. ``p``: a patient row."""
    dead = p.event == 1
    demographic: dict[str, Any] = {"vital_status": "Dead" if dead else "Alive",
                                   "days_to_death": p.time if dead else None}
    # Follow-up is spread over diagnoses and follow_ups the way TCGA records are: the last contact may be in either.
    last = p.time if not dead else float(np.round(p.time * rng.uniform(0.3, 0.95)))
    earlier = float(np.round(last * rng.uniform(0.2, 0.9)))
    if rng.random() < 0.5:
        diagnoses = [{"days_to_last_follow_up": last, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = [{"days_to_follow_up": earlier}, {"days_to_follow_up": None}]
    else:
        diagnoses = [{"days_to_last_follow_up": earlier, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = [{"days_to_follow_up": earlier}, {"days_to_follow_up": last}]
    flaw = p.clinical_flaw
    if flaw == "missing_vital_status":
        demographic["vital_status"] = None
    elif flaw == "dead_without_date":
        demographic.update(vital_status="Dead", days_to_death=None)
    elif flaw == "negative_follow_up":
        demographic.update(vital_status="Alive", days_to_death=None)
        diagnoses = [{"days_to_last_follow_up": -float(rng.integers(5, 60)), "primary_diagnosis": "demo carcinoma"}]
        follow_ups = []
    elif flaw == "no_follow_up":
        demographic.update(vital_status="Alive", days_to_death=None)
        diagnoses = [{"days_to_last_follow_up": None, "primary_diagnosis": "demo carcinoma"}]
        follow_ups = []
    return {"case_id": p.case_id, "submitter_id": p.patient, "project": {"project_id": p.project_id},
            "demographic": demographic, "diagnoses": diagnoses, "follow_ups": follow_ups}
