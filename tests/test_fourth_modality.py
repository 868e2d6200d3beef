"""A fourth modality added in a test, without editing a library module: a 40-feature vector "clin" registered in
an extended registry flows through pretraining, decoder imputation, Table 4 and survival fine-tuning."""

import numpy as np
import pandas as pd
import pytest
import torch

from _synthetic_results import small_config, write_results
from imputmae import data, modalities
from imputmae.checkpoint import load_pretrained
from imputmae.data import PatientDataset, build_arrays, collate, load_omics, load_patients
from imputmae.engine import pretrain
from imputmae.finetune import (FinetuneConfig, impute_patients, load_cohort_inputs, normalizers_from_states,
                               run_finetune)
from imputmae.modalities import Modality, REGISTRY
from imputmae.table4 import table4

CLIN = Modality("clin", "Clinical", "vector", "toy clinical covariates", patch_size=8, layers=1)
N_CLIN = 40


pytestmark = pytest.mark.usefixtures("one_thread")   # tiny models on a shared machine (tests/conftest.py)


@pytest.fixture
def four():
    """The built-in registry plus ``clin``, for this test only."""
    with modalities.using(REGISTRY.extended(CLIN)) as reg:
        yield reg
    assert modalities.names() == ("rna", "dnam", "wsi")


def _write_clin(root, cohorts=("A", "B")) -> set[str]:
    """``{root}/<cohort>/clin.parquet`` (40 features driven by each patient's RNA), every third patient without;
    returns the patients lacking it."""
    lacking = set()
    rng = np.random.default_rng(7)
    w = rng.normal(size=(300, N_CLIN)) / 30
    for cohort in cohorts:
        rna = pd.read_parquet(root / cohort / "rna.parquet")
        x = np.log1p(rna.to_numpy(np.float64)) @ w + rng.normal(0, 0.1, (len(rna), N_CLIN))
        clin = pd.DataFrame(x.astype(np.float32), index=rna.index, columns=[f"c{i:02d}" for i in range(N_CLIN)])
        keep = np.arange(len(clin)) % 3 != 0
        lacking |= set(clin.index[~keep])
        clin[keep].to_parquet(root / cohort / "clin.parquet")
    return lacking


@pytest.fixture
def results(tmp_path, four):
    root = tmp_path / "results"
    write_results(root)
    lacking = _write_clin(root)
    splits = data.make_splits(data.select_split_patients(data.load_patients(root, ["A", "B"])), 3, 0)
    data.write_splits(splits, root / "splits.parquet")
    return root, lacking


def test_extended_registry_is_scoped():
    assert "clin" not in modalities.names()
    with modalities.using(REGISTRY.extended(CLIN)) as reg:
        assert modalities.names() == ("rna", "dnam", "wsi", "clin") and reg.index("clin") == 3
        assert modalities.vector_modalities() == ("rna", "dnam", "clin") and modalities.label("clin") == "Clinical"
        assert modalities.modality_sets()[-2:] == ("clin", "all")
    with pytest.raises(RuntimeError), modalities.using(REGISTRY.extended(CLIN)):
        raise RuntimeError("the registry comes back even when a stage fails")
    assert modalities.names() == modalities.MODALITIES == ("rna", "dnam", "wsi") and len(REGISTRY) == 3
    with pytest.raises(ValueError, match="unknown modality 'clin'"):
        modalities.get("clin")
    with pytest.raises(ValueError, match="distinct names"):
        REGISTRY.extended(Modality("rna", "RNA again", "vector"))


def test_fourth_modality_pretrains_imputes_and_fine_tunes(results, tmp_path):
    root, lacking = results
    cfg = small_config(root)
    cfg["pretrain"]["modalities"] = ["rna", "dnam", "wsi", "clin"]
    out = root / "pretrain" / "multimodal" / "fold0"
    res = pretrain(cfg, run="multimodal", fold=0, out_dir=out, progress=False)
    assert res["status"] == "completed" and np.isfinite(res["history"][-1]["loss_clin"])

    # the checkpoint describes the four-modality model: clin's encoder, normaliser and input width (40 -> 5 x 8)
    mae, norm_states, meta = load_pretrained(out / "checkpoint.pt")
    assert mae.modalities == ("rna", "dnam", "wsi", "clin") and set(norm_states) == {"rna", "dnam", "clin"}
    assert mae.cfg.kinds["clin"] == "vector" and mae.cfg.lengths["clin"] == N_CLIN
    assert mae.cfg.n_patches("clin") == 5 and len(mae.encoders["clin"].blocks) == CLIN.layers
    assert meta["extra"]["train_means"]["clin"].shape == (N_CLIN,)

    # clin's encoder receives gradients from the pretraining loss, with 4 availability columns
    patients = load_patients(root, ["A", "B"])
    with_clin = {p for c in ("A", "B") for p in pd.read_parquet(root / c / "clin.parquet").index}
    assert set(patients.loc[patients["has_clin"], "patient"]) == with_clin and not with_clin & lacking
    norms = normalizers_from_states(norm_states)
    omics = {m: load_omics(root, ["A", "B"], m) for m in norms}
    arrays = build_arrays(patients, omics, norms)
    assert arrays.available.shape == (len(patients), 4) and arrays.vectors["clin"].shape == (len(patients), N_CLIN)
    ds = PatientDataset(arrays, modalities=mae.modalities, n_patches={m: mae.cfg.n_patches(m) for m in mae.modalities},
                        tile_size=32, seed=0)
    batch = collate([ds[i] for i in range(8)])
    noise = {m: batch.pop(f"noise_{m}") for m in mae.modalities}
    batch.pop("index")
    mae.train()
    loss, preds, _, losses = mae(batch, noise=noise)
    loss.backward()
    assert preds["clin"].shape == (8, 5, 8) and losses["clin"] > 0
    grads = [p.grad for p in mae.encoders["clin"].parameters()]
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)
    mae.zero_grad(set_to_none=True)
    mae.eval()

    # decoder imputation returns clin's features for a patient lacking it (and leaves the others' own values)
    inputs = load_cohort_inputs(root, "A", norms)
    without = sorted(p for p in lacking if p.startswith("A-") and inputs.has(p, "rna"))
    have = [p for p in inputs.patients() if inputs.has(p, "clin")][:2]
    imputed = impute_patients(mae, inputs, without + have)
    assert set(imputed["clin"]) == set(without)
    x = imputed["clin"][without[0]]
    assert x.shape == (N_CLIN,) and torch.isfinite(x).all() and 0 <= x.min() <= x.max() <= 1 and x.std() > 0

    # Table 4 gets a Clinical column
    table, per_fold, imputation = table4(cfg, checkpoints={("multimodal", 0): out / "checkpoint.pt"})
    assert list(table.columns) == ["WSI", "RNA", "DNAm", "Clinical"]
    assert np.isfinite(table.loc["Multimodal pretraining", "Clinical"])
    assert "clin" in set(imputation["modality"])

    # survival fine-tuning on all four and on clin alone: finite risks for every test patient
    clin = pd.read_parquet(root / "A" / "clinical.parquet").set_index("patient")[["time", "event"]]
    pts = [p for p in inputs.patients() if p in clin.index]
    test, train = pts[::4], [p for p in pts if p not in pts[::4]]
    settings = dict(epochs=2, batch_size=8, warmup_epochs=1, lr=1e-3, n_bins=4, val_fraction=0.25, seed=0)
    for modset in ("all", "clin"):
        fin = run_finetune(mae, inputs, clin, train, test, FinetuneConfig(modset=modset, **settings))
        pred = fin.predictions
        assert fin.model.modalities == (("rna", "dnam", "wsi", "clin") if modset == "all" else ("clin",))
        assert np.isfinite(pred["risk"]).all() and set(pred.loc[pred["split"] == "test", "patient"])
        if modset == "all":
            assert pred.loc[pred["patient"].isin(without), "imputed_clin"].all()
