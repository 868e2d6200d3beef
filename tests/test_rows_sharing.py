"""What Table 3's rows of one fold share (:mod:`imputmae.baselines.rows`): the zero-filled frozen features, copied
into the training-mean-filled store and read by the baselines' tile features, and the decoder's reconstructions,
made once for every imputing row. Each shared value must equal the one computed alone."""

from __future__ import annotations

import numpy as np
import torch

from imputmae.baselines import baseline_inputs
from imputmae.finetune import frozen_features
from imputmae.finetune.fill import decoder_filled_inputs, fit_mean_fill, mean_filled_inputs
from tests.test_finetune import synthetic_cohort, tiny_mae

MODS = ("rna", "dnam", "wsi")


def _rows(ff, m, i):
    h = ff.h(m, i)
    return None if h is None else h.numpy()


def test_mean_filled_store_reusing_the_zero_store_is_bit_identical(tmp_path):
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    zero = frozen_features(mae, inp, patients, MODS, "zero", cache_dir=tmp_path)
    filled, was_filled = mean_filled_inputs(inp, patients, fit_mean_fill(inp, patients[:9]))
    alone = frozen_features(mae, filled, patients, MODS, "zero", cache_dir=tmp_path)
    calls = []
    real = type(mae.encoders["wsi"].blocks[0]).forward

    def counted(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    type(mae.encoders["wsi"].blocks[0]).forward = counted
    try:
        shared = frozen_features(mae, filled, patients, MODS, "zero", cache_dir=tmp_path, reuse=zero)
    finally:
        type(mae.encoders["wsi"].blocks[0]).forward = real
    assert any(v.any() for v in was_filled.values())        # the cohort has filled modalities to compute
    n_filled = sum(int(was_filled[m].sum()) for m in MODS)
    blocks_per_input = {m: len(mae.encoders[m].blocks) - 1 for m in MODS}
    # only the filled inputs went through the frozen blocks (one call per block per filled patient)
    assert len(calls) == sum(int(was_filled[m].sum()) * blocks_per_input[m] for m in MODS) and n_filled > 0
    for m in MODS:
        np.testing.assert_array_equal(shared.present[m], alone.present[m])
        for i in range(len(patients)):
            a, b = _rows(alone, m, i), _rows(shared, m, i)
            assert (a is None) == (b is None)
            if a is not None:
                np.testing.assert_array_equal(a, b)


def test_recon_cache_imputes_once_with_the_same_values():
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    calls = []
    real = mae.impute

    def counted(batch, *a, **k):
        calls.append(len(batch["available"]))
        return real(batch, *a, **k)

    mae.impute = counted
    alone_fill, _ = decoder_filled_inputs(mae, inp, patients)
    alone_bi = baseline_inputs(mae, inp, patients, "impute")
    n_alone = len(calls)
    calls.clear()
    cache: dict = {}
    fill, _ = decoder_filled_inputs(mae, inp, patients, cache)
    n_first = len(calls)
    bi = baseline_inputs(mae, inp, patients, "impute", recon_cache=cache)
    assert n_first > 0 and len(calls) == n_first and n_alone == 2 * n_first   # the second call imputes nothing
    torch.testing.assert_close(bi.rna, alone_bi.rna, rtol=0, atol=0)
    torch.testing.assert_close(bi.dnam, alone_bi.dnam, rtol=0, atol=0)
    for a, b in zip(alone_bi.tiles, bi.tiles):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for m in ("rna", "dnam"):
        for p, v in alone_fill.omics[m].items():
            np.testing.assert_array_equal(fill.omics[m][p], v)
    for p, v in alone_fill.tiles.items():
        np.testing.assert_array_equal(np.asarray(fill.tiles[p]), np.asarray(v))


def test_baseline_tile_features_from_the_frozen_store_match_the_full_pass(tmp_path):
    """The last block and the final norm on the cached states give the full unmasked pass's CLS (float rounding
    only: the cache's patch embedding is a convolution, the full pass's a linear map on the kept patches)."""
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    zero = frozen_features(mae, inp, patients, MODS, "zero", cache_dir=tmp_path)
    for missing in ("zero", "impute"):
        alone = baseline_inputs(mae, inp, patients, missing)
        shared = baseline_inputs(mae, inp, patients, missing, frozen=zero)
        for i, p in enumerate(patients):
            assert alone.tiles[i].shape == shared.tiles[i].shape
            torch.testing.assert_close(shared.tiles[i], alone.tiles[i], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(shared.available, alone.available, rtol=0, atol=0)


def test_zero_filled_baseline_inputs_from_the_imputed_ones():
    """BaselineInputs.without_imputed (how the rows make the zero-filled inputs) equals baseline_inputs(missing=
    "zero") bit for bit: same omics, same tile features, zero rows and unavailable where the modality is missing."""
    mae = tiny_mae()
    patients, inp, _ = synthetic_cohort(14)
    imp = baseline_inputs(mae, inp, patients, "impute")
    assert bool(imp.imputed.any())
    derived, direct = imp.without_imputed(), baseline_inputs(mae, inp, patients, "zero")
    for name in ("rna", "dnam", "available", "imputed"):
        torch.testing.assert_close(getattr(derived, name), getattr(direct, name), rtol=0, atol=0)
    for a, b in zip(derived.tiles, direct.tiles):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
