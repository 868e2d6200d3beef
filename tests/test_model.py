"""The multimodal MAE on tiny tensors: masking, the loss, gradients, missing modalities, encode/impute, checkpoints."""

import pytest
import torch
import torch.nn.functional as F

from imputmae.checkpoint import load_checkpoint, load_pretrained, save_checkpoint
from imputmae.layers import random_masking
from imputmae.model import MODALITIES, MAEConfig, MultimodalMAE

TINY = dict(hidden_size=32, num_heads=4, intermediate_size=48, layers={"rna": 1, "dnam": 2, "wsi": 1},
            decoder_hidden_size=24, decoder_layers=2, decoder_heads=4, decoder_intermediate_size=40, tile_size=32,
            patch_sizes={"rna": 64, "dnam": 128, "wsi": 16})


def _cfg(**kw):   # RNA: 5 patches (20 padded), DNAm: 4 (12 padded)
    return MAEConfig(lengths={"rna": 300, "dnam": 500}, **{**TINY, **kw})


def _batch(B=5, seed=0, available=None):
    g = torch.Generator().manual_seed(seed)
    rna = torch.rand(B, 320, generator=g)
    rna[:, 300:] = 0
    dnam = torch.rand(B, 512, generator=g)
    dnam[:, 500:] = 0
    avail = torch.ones(B, 3, dtype=torch.bool) if available is None else torch.tensor(available, dtype=torch.bool)
    batch = {"rna": rna, "dnam": dnam, "wsi": torch.rand(B, 3, 32, 32, generator=g), "available": avail}
    for j, m in enumerate(MODALITIES):
        shape = (-1,) + (1,) * (batch[m].dim() - 1)
        batch[m] = batch[m] * avail[:, j].view(shape)
    return batch


MIXED = [[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 0, 1], [1, 0, 0]]


@pytest.fixture
def model():
    torch.manual_seed(0)
    return MultimodalMAE(_cfg()).eval()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_masking_counts_and_restore(seed):
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(4, 10, generator=g)
    ids_keep, mask, ids_restore = random_masking(noise, 3)
    assert ids_keep.shape == (4, 3) and mask.sum(1).tolist() == [7.0] * 4
    # the kept patches are the 3 with the smallest noise, and they are exactly the unmasked ones
    smallest = torch.topk(noise, 3, largest=False).indices
    assert torch.equal(torch.sort(ids_keep, 1).values, torch.sort(smallest, 1).values)
    assert torch.equal(mask.gather(1, ids_keep), torch.zeros(4, 3))
    # ids_restore undoes the shuffle
    shuffled = torch.argsort(noise, 1)
    assert torch.equal(shuffled.gather(1, ids_restore), torch.arange(10).expand(4, -1))


def test_shapes_and_masks_with_missing_modalities(model):
    batch = _batch(available=MIXED)
    loss, preds, masks, losses = model(batch)
    assert {m: tuple(p.shape) for m, p in preds.items()} == {"rna": (5, 5, 64), "dnam": (5, 4, 128),
                                                              "wsi": (5, 4, 768)}
    avail = batch["available"]
    for j, m in enumerate(MODALITIES):
        n = model.cfg.n_patches(m)
        expected = torch.where(avail[:, j], torch.tensor(float(n - int(n * 0.5))), torch.tensor(float(n)))
        assert torch.equal(masks[m].sum(1), expected), m      # 50% masked; a missing modality fully masked
    assert torch.isclose(loss, sum(losses.values()))


def test_loss_counts_only_masked_patches_of_present_modalities(model):
    batch = _batch(available=MIXED)
    noise = {m: torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(7)) for m in MODALITIES}
    with torch.no_grad():
        loss, preds, masks, losses = model(batch, noise=noise)
        enc = model.forward_encoder(batch, 0.5, noise)
        # change the targets of masked patches: the loss changes
        # change the targets of the unmasked patches and of absent samples without touching the model's input:
        # recompute the loss against edited targets through forward_loss
        for m in MODALITIES:
            e = dict(enc[m])
            target = model.patchify(m, e["x"]).clone()
            counted = (masks[m].bool() & e["valid"][:, None])
            edited = target + 5.0 * (~counted)[..., None]                     # unmasked or absent: edited
            e["x"] = _unpatchify_input(model, m, edited)
            l_same, _ = model.forward_loss({**enc, m: e}, preds)
            assert torch.isclose(l_same, loss, rtol=1e-6), m
            hit = target + 5.0 * counted[..., None]
            e["x"] = _unpatchify_input(model, m, hit)
            l_diff, _ = model.forward_loss({**enc, m: e}, preds)
            assert l_diff > loss + 1.0, m


def _unpatchify_input(model, m, patches):
    if m == "wsi":
        p, g = model.cfg.patch("wsi"), 2
        B = patches.shape[0]
        return patches.reshape(B, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(B, 3, g * p, g * p)
    return patches.reshape(patches.shape[0], -1)


def test_loss_is_mse_over_masked_present_elements_excluding_padding(model):
    batch = _batch(available=MIXED)
    with torch.no_grad():
        loss, preds, masks, losses = model(batch)
    m = "rna"
    target = batch["rna"].view(5, 5, 64)
    w = masks[m] * batch["available"][:, 0, None]
    err = (preds[m] - target) ** 2
    real = (torch.arange(320) < 300).view(5, 64)
    by_hand = (err * w[..., None] * real).sum() / (w[..., None] * real).expand_as(err).sum()
    torch.testing.assert_close(losses[m], by_hand)


def test_a_sample_does_not_see_the_padding_of_others(model):
    """Key padding: a sample's predictions are the same alone or in a batch mixing modality sets."""
    batch = _batch(available=MIXED)
    noise = {m: torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(3)) for m in MODALITIES}
    with torch.no_grad():
        _, preds, _, _ = model(batch, noise=noise)
        for i in range(5):
            one = {k: v[i:i + 1] for k, v in batch.items()}
            _, p1, _, _ = model(one, noise={m: n[i:i + 1] for m, n in noise.items()})
            for m in MODALITIES:
                torch.testing.assert_close(p1[m][0], preds[m][i], atol=2e-5, rtol=1e-4)


def test_absent_modality_values_are_ignored(model):
    batch = _batch(available=MIXED)
    noisy = dict(batch)
    noisy["dnam"] = batch["dnam"] + 3.0 * (~batch["available"][:, 1])[:, None]      # garbage where DNAm is absent
    noise = {m: torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(4)) for m in MODALITIES}
    with torch.no_grad():
        a = model(batch, noise=noise)
        b = model(noisy, noise=noise)
    torch.testing.assert_close(a[0], b[0])
    for m in MODALITIES:
        torch.testing.assert_close(a[1][m], b[1][m])


@pytest.mark.parametrize("predict", ["all", "masked"])
def test_gradients_reach_every_parameter(predict):
    torch.manual_seed(0)
    model = MultimodalMAE(_cfg()).train()
    loss, *_ = model(_batch(available=MIXED), predict=predict)
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()
            or p.grad.abs().sum() == 0]
    assert dead == []


def test_unimodal_model_has_one_branch_and_ignores_other_inputs():
    torch.manual_seed(0)
    model = MultimodalMAE(_cfg(modalities=("rna",)))
    assert list(model.encoders) == ["rna"]
    batch = _batch()
    noise = {"rna": torch.rand(5, 5)}
    l1, p1, _, losses = model(batch, noise=noise)
    l2, p2, _, _ = model({"rna": batch["rna"], "available": batch["available"]}, noise=noise)
    assert set(losses) == {"rna"}
    torch.testing.assert_close(l1, l2)


def test_encode_is_deterministic_and_zero_for_absent(model):
    batch = _batch(available=MIXED)
    a, b = model.encode(batch), model.encode(batch)
    for j, m in enumerate(MODALITIES):
        assert a[m].shape == (5, 32)
        torch.testing.assert_close(a[m], b[m])
        absent = ~batch["available"][:, j]
        assert torch.all(a[m][absent] == 0) and torch.all(a[m][~absent].abs().sum(1) > 0)
    assert a["rna"].requires_grad


def test_encoder_blocks_are_exposed_for_partial_freezing(model):
    assert [len(model.encoders[m].blocks) for m in MODALITIES] == [1, 2, 1]


def test_impute_fills_only_missing_modalities(model):
    batch = _batch(available=MIXED)
    out = model.impute(batch)
    assert out["rna"].shape == (5, 320) and out["dnam"].shape == (5, 512) and out["wsi"].shape == (5, 3, 32, 32)
    for j, m in enumerate(MODALITIES):
        avail = batch["available"][:, j]
        torch.testing.assert_close(out[m][avail], batch[m][avail])
        missing = out[m][~avail]
        assert missing.abs().sum() > 0 and missing.min() >= 0 and missing.max() <= 1
    assert torch.all(out["rna"][:, 300:] == 0)                             # padding stays zero
    # imputation depends on what is present
    other = _batch(seed=5, available=MIXED)
    assert not torch.allclose(model.impute(other)["dnam"][1], out["dnam"][1])


def test_impute_shows_present_modalities_masked_as_in_pretraining(model):
    batch = _batch(available=MIXED)
    # one view is exactly the decoder's reconstruction from the encoder's masked view with that draw
    noise = model.view_noise(1, 3, 5, torch.device("cpu"))[0]
    enc = model.forward_encoder(batch, model.cfg.mask_ratio, noise)
    assert [int((~enc[m]["mask"].bool()).sum(1).max()) for m in MODALITIES] == [2, 2, 2]   # half the patches seen
    ref = model.unpatchify("dnam", model.forward_decoder(enc)["dnam"])
    out = model.impute(batch, views=1, seed=3)
    torch.testing.assert_close(out["dnam"][1], ref[1])
    # several views average such reconstructions; views=0 shows every patch once
    two = [model.impute(batch, views=1, seed=s)["dnam"] for s in (10, 11)]
    assert not torch.allclose(two[0][1], two[1][1])
    many = model.impute(batch, views=8, seed=0)["dnam"][1]
    assert not torch.allclose(many, model.impute(batch, views=0)["dnam"][1])


def test_impute_of_a_patient_does_not_depend_on_its_batch(model):
    batch = _batch(available=MIXED)
    whole = model.impute(batch)
    for i in range(5):
        alone = model.impute({k: v[i:i + 1] for k, v in batch.items()})
        for m in MODALITIES:
            torch.testing.assert_close(alone[m][0], whole[m][i])


def test_checkpoint_round_trip_weights_only(tmp_path, model):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    model(_batch())[0].backward()
    opt.step()
    norm = {"rna": {"keep": torch.arange(3), "features_in": ["a", "b", "c"], "n_quantiles": 10}}
    path = save_checkpoint(tmp_path / "ck" / "checkpoint.pt", model=model, optimizer=opt, step=3, epoch=1,
                           model_config=model.cfg, normalizers=norm, extra={"history": [{"epoch": 1, "loss": 0.5}]})
    assert [p.name for p in path.parent.iterdir()] == ["checkpoint.pt"]        # no temporary left behind
    ck = load_checkpoint(path)                                                 # weights_only=True inside
    assert ck["step"] == 3 and ck["model_config"] == model.cfg.to_dict()
    assert torch.equal(ck["normalizers"]["rna"]["keep"], torch.arange(3))
    restored, norms, meta = load_pretrained(path)
    assert not restored.training and meta["epoch"] == 1 and meta["extra"]["history"][0]["loss"] == 0.5
    for (k, v), (k2, v2) in zip(model.state_dict().items(), restored.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    batch = _batch(available=MIXED)
    model.eval()
    torch.testing.assert_close(restored.impute(batch)["wsi"], model.impute(batch)["wsi"])
    opt2 = torch.optim.AdamW(restored.parameters(), lr=1e-3)
    opt2.load_state_dict(ck["optimizer"])


def test_config_from_pipeline_config():
    from imputmae.config import load_config
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    cfg = load_config([root / "config.yaml"])
    c = MAEConfig.from_config(cfg, {"rna": 16304, "dnam": 25978})
    sizes = (c.hidden_size, c.num_heads, c.layers["wsi"], c.decoder_layers, c.decoder_intermediate_size)
    assert sizes == (256, 4, 4, 3, 512)
    assert c.layers == {"rna": 6, "dnam": 6, "wsi": 4} and c.patch_sizes == {"rna": 256, "dnam": 512, "wsi": 16}
    assert (c.n_patches("rna"), c.n_patches("dnam"), c.n_patches("wsi")) == (64, 51, 256)
    assert c.modalities == MODALITIES and c.mask_ratio == 0.5
    assert MAEConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match=r"lengths\['rna'\]: got 0"):
        MAEConfig.from_config(cfg, {"rna": 0, "dnam": 10})
    # the config file's per-modality keys land in the mappings
    big = MAEConfig.from_config({**cfg, "model": {**cfg["model"], "size": "big", "rna_layers": 3, "wsi_patch_size": 32},
                                 "omics": {**cfg["omics"], "dnam": {**cfg["omics"]["dnam"], "patch_size": 128}}},
                                {"rna": 100, "dnam": 100}, modalities=("dnam", "wsi", "rna"))
    assert big.modalities == ("rna", "dnam", "wsi")
    assert big.layers == {"rna": 3, "dnam": 6, "wsi": 12} and big.patch_sizes == {"rna": 256, "dnam": 128, "wsi": 32}


def test_old_checkpoint_config_dicts_load():
    """A checkpoint's model_config written with one field per modality (before the mappings) gives the same
    model configuration, and a model of it loads that checkpoint's weights."""
    old = dict(rna_len=300, dnam_len=500, modalities=["rna", "dnam", "wsi"], hidden_size=32, num_heads=4,
               intermediate_size=48, rna_layers=1, dnam_layers=2, wsi_layers=1, decoder_hidden_size=24,
               decoder_layers=2, decoder_heads=4, decoder_intermediate_size=40, tile_size=32, wsi_patch_size=16,
               rna_patch=64, dnam_patch=128, mask_ratio=0.5, norm_eps=1e-6)
    cfg = MAEConfig.from_dict(old)
    assert cfg == _cfg()
    assert cfg.kinds == {"rna": "vector", "dnam": "vector", "wsi": "image"}
    assert MultimodalMAE(cfg).load_state_dict(MultimodalMAE(_cfg()).state_dict()) is not None
    # a unimodal run's old dict: the other modalities' fields (0 lengths) are dropped, not validated
    uni = MAEConfig.from_dict({**old, "modalities": ["wsi"], "rna_len": 0, "dnam_len": 0})
    assert uni.modalities == ("wsi",) and uni.lengths == {} and uni.layers == {"wsi": 1}
    assert MAEConfig.from_dict(uni.to_dict()) == uni


def test_wsi_head_matmul_equals_transposed_convolution():
    from imputmae.layers import WSIHead

    torch.manual_seed(0)
    head = WSIHead(24, 16)
    torch.nn.init.normal_(head.pixel_bias)
    x = torch.randn(3, 16, 24)
    torch.testing.assert_close(head(x), head.forward_conv(x), atol=1e-5, rtol=1e-5)
    # channel-first: the same patches, each in (channel, row, col) order
    cf = head.forward_conv(x).view(3, 16, 16, 16, 3).permute(0, 1, 4, 2, 3).reshape(3, 16, 768)
    torch.testing.assert_close(head(x, channel_first=True), cf, atol=1e-5, rtol=1e-5)


def test_output_bias_starts_at_the_training_mean(model):
    means = {"rna": torch.full((320,), 0.25), "dnam": torch.linspace(0, 1, 512), "wsi": torch.full((3, 32, 32), 0.7)}
    means["rna"][300:] = 0
    model.init_output_bias(means)
    torch.testing.assert_close(model.heads["rna"].bias, torch.full((64,), 0.25))      # padding excluded
    ew = model.element_weight("dnam")
    expected = (means["dnam"].view(4, 128) * ew).sum(0) / ew.sum(0)
    torch.testing.assert_close(model.heads["dnam"].bias, expected)
    wsi = ((0.7 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])).repeat(256)
    torch.testing.assert_close(model.heads["wsi"].pixel_bias, wsi)


def test_hidden_modality_is_fully_masked_but_still_a_target(model):
    """Modality dropout: a hidden present modality behaves as missing for the encoder, yet its patches count."""
    batch = _batch(available=MIXED)
    hidden = torch.zeros(5, 3, dtype=torch.bool)
    hidden[0, 1] = True                                                   # patient 0's DNAm
    noise = {m: torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(5)) for m in MODALITIES}
    with torch.no_grad():
        _, preds_h, masks_h, losses_h = model({**batch, "hidden": hidden}, noise=noise)
        missing = dict(batch)
        missing["available"] = batch["available"].clone()
        missing["available"][0, 1] = False
        _, preds_m, _, _ = model(missing, noise=noise)
    assert masks_h["dnam"][0].sum() == 4                                  # every patch masked
    for m in MODALITIES:                                                  # the encoder saw exactly what "missing" sees
        torch.testing.assert_close(preds_h[m], preds_m[m])
    target = batch["dnam"].view(5, 4, 128)
    w = masks_h["dnam"] * batch["available"][:, 1, None]                  # patient 0 counts with all 4 patches
    real = (torch.arange(512) < 500).view(4, 128)
    by_hand = ((preds_h["dnam"] - target) ** 2 * w[..., None] * real).sum() / (w[..., None] * real).expand(5, 4, 128).sum()
    torch.testing.assert_close(losses_h["dnam"], by_hand)


@pytest.mark.parametrize("m", MODALITIES)
def test_visible_patch_embedding_equals_the_convolution_at_kept_patches(model, m):
    """embed_visible (a linear map on the kept patches' pixels) = the patch convolution on the whole input, then
    the kept rows: the same parameters, the same numbers."""
    enc = model.encoders[m]
    x = model._input(_batch(seed=3), m)
    ids_keep = torch.argsort(torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(1)), 1)
    ids_keep = ids_keep[:, :model.cfg.n_patches(m) // 2 + 1]
    conv = F.conv2d if m == "wsi" else F.conv1d
    full = conv(x if m == "wsi" else x[:, None], enc.proj.weight, enc.proj.bias, stride=enc.proj.stride)
    full = full.flatten(2).transpose(1, 2) + enc.pos_embed[:, 1:]                 # [B, N, D]
    expected = torch.gather(full, 1, ids_keep[..., None].expand(-1, -1, full.shape[-1]))
    torch.testing.assert_close(enc.embed_visible(enc.patches(x), ids_keep), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("hidden", [None, [[0, 0, 1], [0, 0, 0], [1, 0, 0], [0, 0, 0], [0, 0, 0]]])
def test_masked_only_training_path_equals_the_full_path(hidden):
    """predict="masked" (the training step: the decoder's last block and the heads only on the patches the loss
    counts) gives the full path's loss, per-modality losses, predictions for those patches and gradients; with
    mixed modality sets and with a hidden modality (all its patches are targets)."""
    torch.manual_seed(0)
    model = MultimodalMAE(_cfg()).train()
    batch = _batch(available=MIXED)
    if hidden is not None:
        batch["hidden"] = torch.tensor(hidden, dtype=torch.bool)
    noise = {m: torch.rand(5, model.cfg.n_patches(m), generator=torch.Generator().manual_seed(3)) for m in MODALITIES}
    out = {}
    for predict in ("all", "masked"):
        model.zero_grad(set_to_none=True)
        loss, preds, masks, losses = model(batch, noise=noise, predict=predict)
        loss.backward()
        out[predict] = loss, preds, masks, losses, {n: p.grad for n, p in model.named_parameters()}
    (l_a, p_a, m_a, ls_a, g_a), (l_m, p_m, m_m, ls_m, g_m) = out["all"], out["masked"]
    torch.testing.assert_close(l_m, l_a)
    for m in MODALITIES:
        torch.testing.assert_close(ls_m[m], ls_a[m])
        torch.testing.assert_close(m_m[m], m_a[m])
    enc = model.forward_encoder(batch, 0.5, noise)
    rows = model.loss_rows(enc)
    with torch.no_grad():
        p_rows = model.forward_decoder(enc, rows)                                # the public layout
    for m in MODALITIES:
        n = model.cfg.n_patches(m)
        assert rows[m].shape == (5, n if hidden is not None and m in ("rna", "wsi") else n - int(n * 0.5)), m
        expected = torch.gather(p_a[m], 1, rows[m][..., None].expand(-1, -1, p_a[m].shape[-1]))
        torch.testing.assert_close(p_rows[m], expected, atol=1e-5, rtol=1e-5)
        if m == "wsi":   # the training path's WSI patches are channel-first: (row, col, channel) -> (channel, ...)
            expected = expected.view(5, -1, 16, 16, 3).permute(0, 1, 4, 2, 3).reshape(5, -1, 768)
        torch.testing.assert_close(p_m[m], expected, atol=1e-5, rtol=1e-5)
        # every patch the loss counts is predicted
        counted = (m_a[m] * batch["available"][:, MODALITIES.index(m), None]).bool()
        listed = torch.zeros_like(counted).scatter_(1, rows[m], True)
        assert not (counted & ~listed).any(), m
    assert g_a.keys() == g_m.keys()
    for name in g_a:
        torch.testing.assert_close(g_m[name], g_a[name], atol=1e-6, rtol=1e-4, msg=name)
