"""The baseline networks: forward shapes for every modality pattern, parameter counts at the published default
dimensions against the arithmetic of the original code, and the pieces each one adds (MultiSurv's width rule and
masked max, MoME's trained router and saved random tokens, exact attention with Nyström's parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from imputmae.baselines import (CMTA, BaselineInputs, CMTAConfig, MoME, MoMEConfig, MultiSurv, MultiSurvConfig,
                                build_baseline, collate_inputs, count_parameters, select_top_variance)
from imputmae.baselines._layers import TokenAttention, genomic_groups
from imputmae.baselines.multisurv import fc_widths

pytestmark = pytest.mark.usefixtures("one_thread")   # per-patient forwards of small models (tests/conftest.py)

L_RNA, L_DNAM, F = 24, 20, 16
# (rna, dnam, wsi) availability of the test batch: all present, one missing (each), only RNA
PATTERNS = [(1, 1, 1), (0, 1, 1), (1, 0, 1), (1, 1, 0), (1, 0, 0)]
# narrow widths so that these tests take seconds (the published widths are checked by the parameter counts)
SMALL = {"multisurv": dict(width=32, rna_features=10, dnam_features=8), "cmta": dict(dim=32, genomic_hidden=64),
         "mome": dict(dim=32)}


def pattern_inputs(seed: int = 0) -> BaselineInputs:
    g = torch.Generator().manual_seed(seed)
    P = len(PATTERNS)
    avail = torch.tensor(PATTERNS, dtype=torch.bool)
    rna = torch.rand(P, L_RNA, generator=g) * avail[:, :1]
    dnam = torch.rand(P, L_DNAM, generator=g) * avail[:, 1:2]
    tiles = [torch.randn(2 + i, F, generator=g) if avail[i, 2] else torch.zeros(1, F) for i in range(P)]
    return BaselineInputs([f"P{i}" for i in range(P)], rna, dnam, tiles, avail, torch.zeros(P, 3, dtype=torch.bool))


@pytest.mark.parametrize("name", ["multisurv", "cmta", "mome"])
def test_forward_shapes_for_every_modality_pattern(name):
    torch.manual_seed(0)
    bi = pattern_inputs()
    model = build_baseline(name, L_RNA, L_DNAM, F, n_bins=7, **SMALL[name])
    batch = collate_inputs(bi, np.arange(len(PATTERNS)))
    assert batch["tiles"].shape == (5, 4, F) and batch["tile_mask"].sum(1).tolist() == [2, 3, 4, 0, 0]
    model.eval()
    phi, aux = model(batch)
    assert phi.shape == (len(PATTERNS), 7) and aux.shape == () and torch.isfinite(phi).all()
    # each patient alone gives the same row as in the batch (no patient leaks into another's prediction)
    for i in range(len(PATTERNS)):
        alone, _ = model(collate_inputs(bi, np.array([i])))
        torch.testing.assert_close(alone[0], phi[i], rtol=1e-4, atol=1e-5)
    model.train()
    phi, aux = model(collate_inputs(bi, np.arange(len(PATTERNS))))
    (phi.sum() + aux).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("name", ["multisurv", "cmta", "mome"])
def test_an_unavailable_modality_does_not_reach_the_output(name):
    """With the availability mask, the values behind an unavailable modality are ignored."""
    torch.manual_seed(1)
    bi = pattern_inputs()
    model = build_baseline(name, L_RNA, L_DNAM, F, n_bins=5, **SMALL[name]).eval()
    ref, _ = model(collate_inputs(bi, np.arange(len(PATTERNS))))
    bi.rna[1] = 5.0                 # patient 1 has no RNA
    bi.dnam[4] = 5.0                # patient 4 has no DNAm
    bi.tiles[3] = torch.full((4, F), 5.0)   # patient 3 has no slide
    got, _ = model(collate_inputs(bi, np.arange(len(PATTERNS))))
    torch.testing.assert_close(got, ref)


def _blca_groups():
    """CMTA/MoME's BLCA genomic groups (sizes of the MCAT signature groups in its csv), as contiguous RNA ranges."""
    sizes = [94, 334, 521, 468, 1496, 479]
    edges = np.concatenate([[0], np.cumsum(sizes)])
    return [("rna", int(edges[i]), int(edges[i + 1])) for i in range(6)], int(edges[-1])


def test_multisurv_parameter_count_matches_the_original():
    """MultiSurv with mRNA 1,000, DNAm 5,000, WSI 2,048 (ResNeXt-50's width), 30 yearly intervals, max fusion.

    Original (src/multisurv.py, src/sub_models.py FC: Dropout, Linear, ReLU, BatchNorm on all but the last layer):
      mRNA FC(1000,512,3): (1000*2048+2048)+2*2048 + (2048*1024+1024)+2*1024 + (1024*512+512)      =  4,679,168
      DNAm FC(5000,512,5,sf=2): (5000*8192+8192)+2*8192 + (8192*4096+4096)+2*4096
                                + (4096*2048+2048)+2*2048 + (2048*1024+1024)+2*1024 + (1024*512+512) = 85,571,072
      WSI FC(2048,512,1) after the CNN: 2048*512+512                                               =  1,049,088
      fc_block FC(512,512,4): (512*2048+2048)+4096 + (2048*1024+1024)+2048 + (1024*512+512)+1024
                              + (512*512+512)                                                       =  3,943,424
      risk layer Linear(512, 30): 512*30+30                                                         =     15,390
    total (without the ResNeXt-50 itself, which is our frozen extractor)                            = 95,258,142
    """
    assert fc_widths(1000, 512, 3) == [1000, 2048, 1024, 512]
    assert fc_widths(5000, 512, 5, 2) == [5000, 8192, 4096, 2048, 1024, 512]
    assert fc_widths(512, 512, 4) == [512, 2048, 1024, 512, 512]
    m = MultiSurv(MultiSurvConfig(rna_len=16000, dnam_len=26000, tile_dim=2048, n_bins=30))
    assert count_parameters(m.submodels["rna"]) == 4_679_168
    assert count_parameters(m.submodels["dnam"]) == 85_571_072
    assert count_parameters(m.submodels["wsi"]) == 1_049_088
    assert count_parameters(m.fc_block) == 3_943_424
    original = ((1000 * 2048 + 2048) + 2 * 2048 + (2048 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512)
                + (5000 * 8192 + 8192) + 2 * 8192 + (8192 * 4096 + 4096) + 2 * 4096 + (4096 * 2048 + 2048) + 2 * 2048
                + (2048 * 1024 + 1024) + 2 * 1024 + (1024 * 512 + 512)
                + 2048 * 512 + 512
                + (512 * 2048 + 2048) + 4096 + (2048 * 1024 + 1024) + 2048 + (1024 * 512 + 512) + 1024
                + (512 * 512 + 512)
                + 512 * 30 + 30)
    assert original == 95_258_142
    assert count_parameters(m) == original


def test_cmta_parameter_count_matches_the_original():
    """CMTA small/concat, BLCA groups (sum 3,392 inputs), 1,024-d CLAM features, 4 bins (models/cmta/network.py).

      pathomics_fc: (1024*256+256) + (256*256+256)                                  =   328,192
      genomics_fc: 6 SNNs (s -> 1024 -> 256): 1024*3392 + 6*(1024 + 1024*256+256)   = 5,053,952
      TransLayer: LN 2*256 + to_qkv 256*768 + to_out 256*256+256 + res_conv 8*33      =   263,176
      Transformer_P: PPEG (256*49+256 + 256*25+256 + 256*9+256) + cls 256
                     + 2 TransLayers + LN 512                                        =   549,136 (x2)
      Transformer_G: cls 256 + 2 TransLayers + LN 512                                =   527,120 (x2)
      MultiheadAttention(256, 1): 3*256*256 + 3*256 + 256*256+256                     =   263,168 (x2)
      mm: (512*256+256) + (256*256+256)                                              =   197,120
      classifier: 256*4+4                                                            =     1,028
    total                                                                            = 8,259,140
    """
    groups, n = _blca_groups()
    trans = 2 * 256 + 256 * 768 + (256 * 256 + 256) + 8 * 33
    original = ((1024 * 256 + 256) + (256 * 256 + 256)
                + 1024 * 3392 + 6 * (1024 + 1024 * 256 + 256)
                + 2 * ((256 * 49 + 256) + (256 * 25 + 256) + (256 * 9 + 256) + 256 + 2 * trans + 512)
                + 2 * (256 + 2 * trans + 512)
                + 2 * (3 * 256 * 256 + 3 * 256 + 256 * 256 + 256)
                + (512 * 256 + 256) + (256 * 256 + 256)
                + 256 * 4 + 4)
    assert trans == 263_176 and original == 8_259_140
    m = CMTA(CMTAConfig(rna_len=n, dnam_len=10, tile_dim=1024, n_bins=4, groups=groups))
    assert count_parameters(m) == original


def test_mome_parameter_count_matches_the_original():
    """MoME small/small, 2 bottlenecks, BLCA groups, 1,024-d features, 4 bins (models/model_mome.py).

      sig_networks: 6 SNNs (s -> 512 -> 512): 512*3392 + 6*(512 + 512*512+512)        =  3,315,712
      wsi_net: 1024*512+512                                                           =    524,800
      TransLayer(512): norm (LN 1,024 / RMS 512) + to_qkv 512*1536 + to_out 512*512+512
                       + res_conv 8*33                                                = 1,050,376 / 1,049,864
      MoME layer: TransFusion (RMS TransLayer) 1,049,864
                  + BottleneckTransFusion: an RMSNorm 512 + 2 LN TransLayers            = 2,101,264
                  + AddFusion: 2 SNN(512,512) + 2 RMSNorm                              =   526,336
                  + router: 2 (Linear 512x512 + RMSNorm) + Linear(512, 4)              =   528,388
                                                                                      = 4,205,852 (x4)
      multi_layer1 (LN TransLayer) 1,050,376; classifier 512*4+4 = 2,052
    total                                                                             = 21,716,348
    The bottleneck tokens and cls are torch.rand, not parameters, in both. Ours leaves out the RMSNorm that
    BottleneckTransFusion builds and never calls (4 x 512 = 2,048): 21,714,300.
    """
    groups, n = _blca_groups()
    attn = 512 * 1536 + (512 * 512 + 512) + 8 * 33
    ln_layer, rms_layer = 1024 + attn, 512 + attn
    mome_layer = rms_layer + (512 + 2 * ln_layer) + (2 * (512 * 512 + 512) + 2 * 512) \
        + (2 * (512 * 512 + 512 + 512) + 512 * 4 + 4)
    original = (512 * 3392 + 6 * (512 + 512 * 512 + 512)) + (1024 * 512 + 512) + 4 * mome_layer + ln_layer \
        + 512 * 4 + 4
    assert ln_layer == 1_050_376 and mome_layer == 4_205_852 and original == 21_716_348
    m = MoME(MoMEConfig(rna_len=n, dnam_len=10, tile_dim=1024, n_bins=4, groups=groups))
    assert count_parameters(m) == original - 4 * 512


def test_mome_router_gets_gradients_and_random_tokens_are_saved():
    torch.manual_seed(0)
    bi = pattern_inputs()
    for hard in (True, False):
        m = MoME(MoMEConfig(rna_len=L_RNA, dnam_len=L_DNAM, tile_dim=F, n_bins=5, hard=hard, dim=32))
        phi, _ = m(collate_inputs(bi, np.arange(3)))
        phi.sum().backward()
        for layer in m.layers:
            g = layer.router.classifier.weight.grad
            assert g is not None and float(g.abs().sum()) > 0
    a = MoME(MoMEConfig(rna_len=L_RNA, dnam_len=L_DNAM, tile_dim=F, dim=32, seed=3))
    b = MoME(MoMEConfig(rna_len=L_RNA, dnam_len=L_DNAM, tile_dim=F, dim=32, seed=4))
    assert "cls_multimodal" in a.state_dict() and "layers.0.bottleneck" in a.state_dict()
    assert not torch.equal(a.cls_multimodal, b.cls_multimodal)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.cls_multimodal, b.cls_multimodal)


def test_token_attention_is_exact_softmax_attention_plus_the_value_convolution():
    torch.manual_seed(0)
    att = TokenAttention(16, heads=4, dropout=0.0, residual_kernel=3).eval()
    x = torch.randn(2, 5, 16)
    q, k, v = att.to_qkv(x).chunk(3, dim=-1)
    split = lambda t: t.view(2, 5, 4, 4).transpose(1, 2)    # noqa: E731
    q, k, v = split(q), split(k), split(v)
    w = torch.softmax(q @ k.transpose(-1, -2) / 2.0, dim=-1)                 # scale 1/sqrt(4)
    conv = torch.nn.functional.conv2d(v, att.res_conv.weight, padding=(1, 0), groups=4)
    want = att.to_out((w @ v + conv).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(att(x), want, rtol=1e-5, atol=1e-6)


def test_multisurv_masked_max_and_native_zero_fill():
    torch.manual_seed(0)
    bi = pattern_inputs()
    masked = MultiSurv(MultiSurvConfig(L_RNA, L_DNAM, F, n_bins=5)).eval()
    native = MultiSurv(MultiSurvConfig(L_RNA, L_DNAM, F, n_bins=5, use_mask=False)).eval()
    native.load_state_dict(masked.state_dict())
    batch = collate_inputs(bi, np.arange(len(PATTERNS)))
    h = masked.embed(batch)
    fused_masked = masked.classifier(masked.fc_block(h.masked_fill(~batch["available"][..., None], -1e9).amax(1)))
    torch.testing.assert_close(masked(batch)[0], fused_masked)
    torch.testing.assert_close(native(batch)[0], native.classifier(native.fc_block(h.amax(1))))
    assert not torch.allclose(masked(batch)[0][1:], native(batch)[0][1:])    # zero embeddings enter the native max


def test_feature_preselection_and_genomic_groups():
    x = torch.zeros(6, 5)
    x[:, 3] = torch.arange(6.0)
    x[:, 1] = torch.arange(6.0) * 0.5
    assert select_top_variance(x, 2).tolist() == [1, 3]
    assert genomic_groups(10, 7, 3, 1) == (("rna", 0, 3), ("rna", 3, 7), ("rna", 7, 10), ("dnam", 0, 7))
    with pytest.raises(ValueError, match="no group"):
        genomic_groups(10, 7, 0, 0)
