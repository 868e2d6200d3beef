"""The survival CLI end to end on a tiny synthetic results folder laid out as docs/layout.md says:
finetune -> cox-baseline -> table3 (+ KM figures) -> predict / impute round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from imputmae.cli import main
from imputmae.checkpoint import save_checkpoint
from imputmae.model import MAEConfig, MultimodalMAE
from imputmae.normalize import OmicsNormalizer

N_FOLDS = 2
MODSETS = ("rna", "all")  # dnam and wsi run the same code path (test_finetune.py covers wsi)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    R = tmp_path_factory.mktemp("results")
    rng = np.random.default_rng(0)
    n = 40
    patients = [f"SYN-{i:04d}" for i in range(n)]
    z = rng.normal(size=n)
    t = rng.exponential(1000 * np.exp(-1.5 * z))
    c = rng.exponential(3000, n)
    clin = pd.DataFrame({"patient": patients, "project_id": "SYN", "vital_status": "x",
                         "time": np.minimum(t, c).round() + 1, "event": (t <= c).astype(int)})
    (R / "SYN" / "wsi").mkdir(parents=True)
    clin.to_parquet(R / "SYN" / "clinical.parquet", index=False)
    folds = np.arange(n) % N_FOLDS
    pd.DataFrame({"patient": patients, "cohort": "SYN", "project_id": "SYN", "event": clin["event"],
                  "fold": folds}).to_parquet(R / "splits.parquet", index=False)
    genes = [f"ENSG{i:011d}" for i in range(50)]
    rna = pd.DataFrame(np.exp(rng.normal(2, 1, (n, 50)) + z[:, None] * np.linspace(-1, 1, 50)),
                       index=pd.Index(patients, name="patient"), columns=genes).astype(np.float32)
    has_rna = np.arange(n) % 6 != 5
    rna[has_rna].to_parquet(R / "SYN" / "rna.parquet")
    probes = [f"cg{i:08d}" for i in range(30)]
    beta = 1 / (1 + np.exp(-(rng.normal(0, 1, (n, 30)) + z[:, None])))
    beta[rng.random(beta.shape) < 0.05] = np.nan
    dnam = pd.DataFrame(beta, index=pd.Index(patients, name="patient"), columns=probes).astype(np.float32)
    dnam[np.arange(n) % 4 != 1].to_parquet(R / "SYN" / "dnam.parquet")
    qc = []
    for i, p in enumerate(patients):
        if i % 5 != 2:
            sig = 1 / (1 + np.exp(-z[i]))
            tiles = (np.clip(sig + rng.normal(0, 0.2, (2, 32, 32, 3)), 0, 1) * 255).astype(np.uint8)
            np.save(R / "SYN" / "wsi" / f"{p}.npy", tiles)
        qc.append({"patient": p, "slide": f"{p}.svs", "status": "ok" if i % 5 != 2 else "blank", "n_tiles": 2})
    pd.DataFrame(qc).to_csv(R / "SYN" / "wsi_qc.tsv", sep="\t", index=False)
    for fold in range(N_FOLDS):
        train = [p for p, f in zip(patients, folds) if f != fold]
        nr = OmicsNormalizer("rna", min_std=0.1, n_quantiles=50, patch_size=16).fit(rna.loc[rna.index.isin(train)
                                                                                          & has_rna])
        nd = OmicsNormalizer("dnam", n_quantiles=50, patch_size=16).fit(dnam.loc[train])
        torch.manual_seed(fold)
        cfg = MAEConfig.from_dict(dict(rna_len=nr.n_features_, dnam_len=nd.n_features_, hidden_size=32, num_heads=2,
                        intermediate_size=64, rna_layers=2, dnam_layers=2, wsi_layers=2, decoder_hidden_size=32,
                        decoder_layers=1, decoder_heads=2, decoder_intermediate_size=64, tile_size=32,
                        wsi_patch_size=16, rna_patch=16, dnam_patch=16))
        save_checkpoint(R / "pretrain" / "multimodal" / f"fold{fold}" / "checkpoint.pt", model=MultimodalMAE(cfg),
                        optimizer=None, step=0, epoch=0, model_config=cfg,
                        normalizers={"rna": nr.state_dict(), "dnam": nd.state_dict()},
                        extra={"train_patients": train})
    params = json.dumps({"epochs": 3, "batch_size": 8, "warmup_epochs": 1, "lr": 1e-3, "n_bins": 6,
                         "val_fraction": 0.25, "seed": 0})
    for fold in range(N_FOLDS):
        for modset in MODSETS:
            rc = main(["finetune", "--checkpoint", str(R / "pretrain/multimodal" / f"fold{fold}" / "checkpoint.pt"),
                       "--results", str(R), "--cohort", "SYN", "--modset", modset, "--fold", str(fold),
                       "--params", params, "--out", str(R / "finetune/SYN" / modset / f"fold{fold}")])
            assert rc == 0
    assert main(["cox-baseline", "--results", str(R), "--cohort", "SYN", "--modsets", "rna", "dnam", "wsi", "all",
                 "--params",
                 json.dumps({"n_components": 3, "penalizer": 0.5, "n_bins": 6}),
                 "--out", str(R / "baselines/cox/SYN")]) == 0
    return R, patients, rna, dnam


def test_finetune_outputs(results):
    R, patients, rna, _ = results
    d = R / "finetune/SYN/all/fold1"
    m = json.loads((d / "metrics.json").read_text())
    # SYN-0017 has no modality at all: not a patient of any modality set
    assert m["fold"] == 1 and m["n_test"] == 19 and 0 <= m["antolini"] <= 1
    pred = pd.read_parquet(d / "predictions.parquet")
    test = pred.loc[pred["split"] == "test", "patient"]
    assert set(test) == set(patients[1::2]) - {"SYN-0017"}
    st = torch.load(d / "model.pt", weights_only=True)
    assert st["members"] and not set(st["train_patients"]) & set(test)
    for member in st["members"]:
        assert not set(member["fit_patients"] + member["val_patients"]) & set(test)
    rna_only = pd.read_parquet(R / "finetune/SYN/rna/fold1/predictions.parquet")
    assert set(rna_only["patient"]) <= set(rna.index)


def test_cox_outputs(results):
    R, *_ = results
    for modset in ("rna", "dnam", "wsi", "all"):
        m = json.loads((R / "baselines/cox/SYN" / modset / "fold0" / "metrics.json").read_text())
        assert 0 <= m["antolini"] <= 1 and m["n_test"] > 0


def test_table3_and_km(results, tmp_path, capsys):
    R, patients, *_ = results
    oracle = pd.DataFrame({"patient": patients, "project_id": "SYN", "risk": np.arange(len(patients), 0, -1.0)})
    oracle.to_parquet(tmp_path / "oracle.parquet")
    assert main(["table3", "--results", str(R), "--cohorts", "SYN", "--modsets", *MODSETS, "--folds", str(N_FOLDS),
                 "--oracle",
                 str(tmp_path / "oracle.parquet"), "--no-literature", "--n-boot", "50"]) == 0
    t = pd.read_csv(R / "tables/table3.csv")
    assert list(t.columns[:6]) == ["model", "modality", "missing", "source", "SYN", "SYN vs all"]
    assert set(t["model"]) == {"impuTMAE (ours)", "Cox-PCA (ours)", "oracle (true risk)"}
    cells = pd.read_csv(R / "tables/table3_cells.csv")
    assert len(cells) == 4 and np.isfinite(cells[["estimate", "lower", "upper"]]).all().all()
    assert (cells["lower"] <= cells["estimate"]).all() and (cells["estimate"] <= cells["upper"]).all()
    # one common test set: every test patient with RNA and a label; the 'all' rows score exactly those
    alls = cells[cells["modality"] == "all"]
    assert (alls["n"] == alls["n_reference"]).all() and (alls["n"] == 40 - sum(i % 6 == 5 for i in range(40))).all()
    others = cells[cells["key"] != "impuTMAE"].dropna(subset=["difference"])
    assert len(others) == 2 and ((others["p"] > 0) & (others["p"] <= 1)).all()
    md = (R / "tables/table3.md").read_text()
    assert "Antolini's time-dependent C-index" in md and "oracle" in md and "percentile bootstrap" in md
    assert (R / "tables/table3.tex").read_text().count(r"\\") == 6  # header, 2 + 2 model rows, oracle
    assert (R / "figures/km_SYN.png").stat().st_size > 1000


def test_predict_and_impute_round_trip(results, tmp_path):
    R, patients, rna, dnam = results
    model = R / "finetune/SYN/all/fold0"
    test = pd.read_parquet(model / "predictions.parquet").query("split == 'test'").set_index("patient")
    new = [p for p in test.index if p in rna.index][:5]
    rna.loc[new].reset_index().to_csv(tmp_path / "rna.csv", index=False)
    dnam.loc[[p for p in new if p in dnam.index]].to_parquet(tmp_path / "dnam.parquet")
    tiles = [str(R / "SYN/wsi" / f"{p}.npy") for p in new if (R / "SYN/wsi" / f"{p}.npy").exists()]
    out = tmp_path / "pred.parquet"
    assert main(["predict", "--model", str(model), str(tmp_path / "rna.csv"), str(tmp_path / "dnam.parquet"),
                 *tiles, "--out", str(out)]) == 0
    pred = pd.read_parquet(out).set_index("patient")
    # the same patients with the same inputs: the same risk as at evaluation
    np.testing.assert_allclose(pred.loc[new, "risk"], test.loc[new, "risk"], rtol=1e-5)
    assert any(c.startswith("S(") for c in pred.columns)
    # impute: RNA withheld -> reconstructed in raw FPKM-UQ units for exactly those patients
    assert main(["impute", "--model", str(model), str(tmp_path / "dnam.parquet"), *tiles,
                 "--out", str(tmp_path / "imp")]) == 0
    rec = pd.read_parquet(tmp_path / "imp" / "rna.parquet")
    assert set(rec.index) == set(new) and (rec.to_numpy() >= 0).all() and rec.shape[1] <= rna.shape[1]
    assert set(rec.columns) <= set(rna.columns)
    assert main(["predict", "--model", str(tmp_path), str(tmp_path / "rna.csv"), "--out", str(out)]) == 2


def _same_model_file(a, b) -> None:
    """Two model.pt hold the same tensors and the same other entries (their zip bytes differ: each records the
    temporary file name it was written under)."""
    sa, sb = torch.load(a, weights_only=True), torch.load(b, weights_only=True)

    def same(x, y):
        if isinstance(x, torch.Tensor):
            return isinstance(y, torch.Tensor) and x.dtype == y.dtype and torch.equal(x, y)
        if isinstance(x, dict):
            return isinstance(y, dict) and x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (list, tuple)):
            return type(x) is type(y) and len(x) == len(y) and all(same(u, v) for u, v in zip(x, y))
        return x == y

    assert sa.keys() == sb.keys()
    for k in sa:
        assert same(sa[k], sb[k]), k


def test_several_modsets_in_one_process_give_each_set_its_own_bytes(results, tmp_path):
    """finetune.one_job_per_fold: the four sets of a fold in one `imputmae finetune` (shared frozen features) write
    the predictions (same bytes) and models (same tensors) that one job per set writes."""
    R, *_ = results
    ckpt = str(R / "pretrain/multimodal/fold0/checkpoint.pt")
    params = json.dumps({"epochs": 3, "batch_size": 8, "warmup_epochs": 1, "lr": 1e-3, "n_bins": 6,
                         "val_fraction": 0.25, "seed": 0})
    common = ["finetune", "--checkpoint", ckpt, "--results", str(R), "--cohort", "SYN", "--fold", "0", "--params",
              params]
    sets = ["rna", "dnam", "wsi", "all"]
    for s in sets:
        assert main([*common, "--modset", s, "--out", str(tmp_path / "alone" / s)]) == 0
    assert main([*common, "--modset", *sets, "--out", str(tmp_path / "grouped" / "{modset}")]) == 0
    for s in sets:
        a, g = tmp_path / "alone" / s, tmp_path / "grouped" / s
        assert (a / "predictions.parquet").read_bytes() == (g / "predictions.parquet").read_bytes(), s
        _same_model_file(a / "model.pt", g / "model.pt")
        ma, mg = (json.loads((d / "metrics.json").read_text()) for d in (a, g))
        timing = {"cpu_seconds", "seconds_cache", "seconds_train", "shared_cpu_seconds"}
        assert {k: v for k, v in ma.items() if k not in timing} == {k: v for k, v in mg.items() if k not in timing}
        # each grouped set's CPU time counts the shared frozen-feature pass it read (Table 3's CPU s / fold)
        assert ma["shared_cpu_seconds"] == 0 and 0 < mg["shared_cpu_seconds"] <= mg["cpu_seconds"]
    # the fixture's own runs (one job per set, fold 0) are the same too
    assert ((R / "finetune/SYN/all/fold0/predictions.parquet").read_bytes()
            == (tmp_path / "grouped/all/predictions.parquet").read_bytes())


def test_several_modsets_need_an_out_pattern(results, capsys):
    R, *_ = results
    rc = main(["finetune", "--checkpoint", str(R / "pretrain/multimodal/fold0/checkpoint.pt"), "--results", str(R),
               "--cohort", "SYN", "--fold", "0", "--modset", "rna", "all", "--out", str(R / "nowhere")])
    assert rc != 0 and "{modset}" in capsys.readouterr().err
    assert not (R / "nowhere").exists()
