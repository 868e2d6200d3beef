"""Patient table, outer folds, pretraining patients, and the per-sample seeded dataset."""

import numpy as np
import pandas as pd
import pytest
import torch

from _synthetic_results import use_stand_in_normalizer, write_results
from imputmae import data


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "results"
    write_results(r)
    return r


def test_load_patients_flags_every_modality(root):
    p = data.load_patients(root, ["A", "B"])
    assert len(p) == 48 and p["patient"].is_unique
    a = p.set_index("patient")
    assert not a.loc["A-0000", "has_rna"] and a.loc["A-0001", "has_rna"]            # first patient: no RNA
    assert not a.loc["A-0002", "has_dnam"] and a.loc["A-0003", "has_dnam"]          # i % 5 == 2: no DNAm
    assert not a.loc["A-0003", "has_wsi"] and a.loc["A-0003", "wsi_path"] != a.loc["A-0003", "wsi_path"]  # blank
    assert a.loc["A-0004", "wsi_path"].endswith("A/wsi/A-0004.npy")
    assert np.isnan(a.loc["A-0023", "time"])                                        # no clinical labels
    assert set(a.loc[a["cohort"] == "B", "project_id"].dropna()) == {"P-B1", "P-B2"}


def test_missing_tiles_marked_ok_is_an_error_naming_the_patient(root):
    (root / "A" / "wsi" / "A-0004.npy").unlink()
    with pytest.raises(FileNotFoundError, match="A-0004"):
        data.load_patients(root, ["A", "B"])


def test_missing_clinical_table_names_the_file(root):
    (root / "B" / "clinical.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="B/clinical.parquet"):
        data.load_patients(root, ["A", "B"])


@pytest.mark.parametrize("seed", [0, 1])
def test_splits_partition_and_stratify(root, seed):
    eligible = data.select_split_patients(data.load_patients(root, ["A", "B"]))
    assert eligible["has_rna"].all() and eligible["event"].notna().all()
    s = data.make_splits(eligible, 3, seed)
    assert sorted(s["patient"]) == sorted(eligible["patient"]) and set(s["fold"]) == {0, 1, 2}
    assert list(s.columns) == ["patient", "cohort", "project_id", "event", "fold"]
    # every fold holds each cohort's project/event groups in (near) equal shares
    for (cohort, project, event), g in s.groupby(["cohort", "project_id", "event"]):
        counts = g["fold"].value_counts().reindex([0, 1, 2], fill_value=0)
        assert counts.max() - counts.min() <= 1, (cohort, project, event)
    # seeded and independent of row order
    again = data.make_splits(eligible.sample(frac=1, random_state=3), 3, seed)
    pd.testing.assert_frame_equal(s, again)


def test_splits_round_trip_atomically(root, tmp_path):
    s = data.make_splits(data.select_split_patients(data.load_patients(root, ["A", "B"])), 3, 0)
    path = data.write_splits(s, tmp_path / "out" / "splits.parquet")
    assert [p.name for p in path.parent.iterdir()] == ["splits.parquet"]
    pd.testing.assert_frame_equal(data.read_splits(path), s)


def test_pretraining_patients_never_include_the_folds_test_patients(root):
    patients = data.load_patients(root, ["A", "B"])
    s = data.make_splits(data.select_split_patients(patients), 3, 0)
    for fold in range(3):
        train = data.pretraining_patients(patients, s, fold, ("rna", "dnam", "wsi"))
        test = set(s.loc[s["fold"] == fold, "patient"])
        assert not set(train["patient"]) & test
        assert set(train["patient"]) | test == set(patients["patient"])   # everyone else pretrains
    only_wsi = data.pretraining_patients(patients, s, 0, ("wsi",))
    assert only_wsi["has_wsi"].all()


def test_dataset_draws_seeded_tiles_and_noise(root, monkeypatch):
    use_stand_in_normalizer(monkeypatch)
    patients = data.load_patients(root, ["A", "B"])
    omics = {k: data.load_omics(root, ["A", "B"], k) for k in ("rna", "dnam")}
    cfg = {"omics": {"rna": {"patch_size": 256}, "dnam": {"patch_size": 512}}}
    norms = data.fit_normalizers(omics, patients["patient"].tolist(), cfg)
    arrays = data.build_arrays(patients, omics, norms)
    assert arrays.vectors["rna"].shape == (48, 512) and arrays.vectors["dnam"].shape == (48, 1024)
    assert arrays.modalities == ("rna", "dnam", "wsi")
    assert np.array_equal(arrays.available[:, arrays.column("rna")], patients["has_rna"].to_numpy())
    assert not arrays.vectors["rna"][0].any()                                    # absent: zeros
    ds = data.PatientDataset(arrays, modalities=("rna", "dnam", "wsi"), n_patches={"rna": 2, "dnam": 2, "wsi": 4},
                             tile_size=32, seed=0)
    i = 1
    a = ds[i]
    assert a["wsi"].shape == (3, 32, 32) and a["wsi"].dtype == torch.float32
    assert 0 <= a["wsi"].min() <= a["wsi"].max() <= 1
    assert set(a) == {"rna", "dnam", "wsi", "available", "noise_rna", "noise_dnam", "noise_wsi", "index"}
    b = ds[i]
    assert torch.equal(a["wsi"], b["wsi"]) and torch.equal(a["noise_wsi"], b["noise_wsi"])
    tiles = np.load(arrays.image_paths["wsi"][i])
    assert any(torch.equal(a["wsi"], torch.from_numpy(t).permute(2, 0, 1).float() / 255) for t in tiles)
    seen = set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        seen.add(ds[i]["wsi"].sum().item())
    assert len(seen) > 1                                                         # another tile in another epoch
    # a unimodal dataset masks RNA exactly like the multimodal one
    uni = data.PatientDataset(arrays, modalities=("rna",), n_patches={"rna": 2}, tile_size=32, seed=0)
    ds.set_epoch(0)
    assert torch.equal(uni[i]["noise_rna"], ds[i]["noise_rna"]) and not uni[i]["available"][2]
    batch = data.collate([ds[0], ds[1], ds[2]])
    assert batch["rna"].shape == (3, 512) and batch["index"].tolist() == [0, 1, 2]


def test_bad_tile_file_is_named(root, monkeypatch):
    use_stand_in_normalizer(monkeypatch)
    np.save(root / "A" / "wsi" / "A-0001.npy", np.zeros((2, 16, 16, 3), np.uint8))
    patients = data.load_patients(root, ["A"])
    arrays = data.build_arrays(patients, {}, {}, widths={"rna": 256, "dnam": 512})
    ds = data.PatientDataset(arrays, modalities=("wsi",), n_patches={"wsi": 4}, tile_size=32, seed=0)
    with pytest.raises(ValueError, match="A-0001.npy.*A-0001"):
        ds[1]
