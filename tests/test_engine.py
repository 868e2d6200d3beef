"""Pretraining loop: schedule, resume == uninterrupted, SIGTERM, non-finite stop, DDP, Table 4 end to end."""

import math
import os
import signal
import socket

import pandas as pd
import pytest
import torch

from _synthetic_results import small_config, use_stand_in_normalizer, write_results
from imputmae import data
from imputmae.engine import EXIT_PREEMPTED, get_lr, pretrain, train_one_epoch
from imputmae.table4 import table4
from imputmae.checkpoint import load_checkpoint
from imputmae.model import MAEConfig, MultimodalMAE


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core machine: one thread avoids OpenMP spinning against other processes."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def results(tmp_path, monkeypatch):
    use_stand_in_normalizer(monkeypatch)
    root = tmp_path / "results"
    write_results(root)
    splits = data.make_splits(data.select_split_patients(data.load_patients(root, ["A", "B"])), 3, 0)
    data.write_splits(splits, root / "splits.parquet")
    return root


def test_get_lr_warmup_then_cosine():
    lrs = [get_lr(s, base_lr=1.0, warmup_steps=4, total_steps=20) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert lrs[4] == 1.0 and all(a >= b for a, b in zip(lrs[4:], lrs[5:]))
    assert math.isclose(get_lr(12, base_lr=1.0, warmup_steps=4, total_steps=20), 0.5)   # half way down the cosine
    assert get_lr(20, base_lr=1.0, warmup_steps=4, total_steps=20) == 0.0


def test_pretrain_writes_checkpoint_metrics_and_plot(results):
    cfg = small_config(results)
    out = results / "pretrain" / "multimodal" / "fold0"
    res = pretrain(cfg, run="multimodal", fold=0, out_dir=out, progress=False)
    assert res["status"] == "completed" and res["epoch"] == 2
    metrics = pd.read_csv(out / "metrics.csv")
    assert list(metrics.columns) == ["epoch", "step", "lr", "loss", "loss_rna", "loss_dnam", "loss_wsi", "seconds"]
    assert metrics["epoch"].tolist() == [1, 2] and metrics["loss"].notna().all()
    assert (out / "loss.png").stat().st_size > 1000
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 2 and ck["step"] == metrics["step"].iloc[-1]
    assert set(ck["normalizers"]) == {"rna", "dnam"}
    # no test patient of fold 0 was used for training or for fitting the normalisers
    splits = pd.read_parquet(results / "splits.parquet")
    test = set(splits.loc[splits["fold"] == 0, "patient"])
    train = set(ck["extra"]["train_patients"])
    assert train and not (train & test)
    assert {"A-0023", "B-0022"} <= train         # patients without labels still pretrain (never test patients)
    norm = data.restore_normalizer(ck["normalizers"]["rna"])
    rna = data.load_omics(results, ["A", "B"], "rna")
    fitted_on = rna.loc[rna.index.isin(train)]
    assert torch.equal(torch.as_tensor(norm.min_), torch.as_tensor(fitted_on.min().to_numpy(dtype="float64")))


def test_resume_after_sigterm_equals_uninterrupted(results):
    cfg = small_config(results, epochs=3)
    full = results / "full"
    a = pretrain(cfg, run="multimodal", fold=0, out_dir=full, progress=False)

    def preempt(step):
        if step == 7:                       # inside the second epoch (5 steps per epoch)
            os.kill(os.getpid(), signal.SIGTERM)

    part = results / "part"
    b1 = pretrain(cfg, run="multimodal", fold=0, out_dir=part, on_step=preempt, progress=False)
    assert b1["status"] == "preempted"
    assert not (part / "checkpoint.pt").exists()          # the final output appears only when training completes
    ck = load_checkpoint(part / "last.pt")
    assert (ck["epoch"], ck["step"], ck["extra"]["batches_done"]) == (1, 7, 2)
    b2 = pretrain(cfg, run="multimodal", fold=0, out_dir=part, resume=True, progress=False)
    assert b2["status"] == "completed"
    assert not (part / "last.pt").exists()
    wa, wb = load_checkpoint(full / "checkpoint.pt"), load_checkpoint(part / "checkpoint.pt")
    assert wa["step"] == wb["step"] == 15
    for k in wa["model"]:
        assert torch.equal(wa["model"][k], wb["model"][k]), k
    for key in ("loss", "loss_rna", "loss_dnam", "loss_wsi", "lr"):
        assert [r[key] for r in a["history"]] == pytest.approx([r[key] for r in b2["history"]], rel=1e-12), key
    assert pd.read_csv(part / "metrics.csv")["epoch"].tolist() == [1, 2, 3]


def test_unimodal_run_uses_one_branch(results):
    cfg = small_config(results, epochs=1)
    out = results / "pretrain" / "dnam" / "fold0"
    pretrain(cfg, run="dnam", fold=0, out_dir=out, progress=False)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["model_config"]["modalities"] == ["dnam"] and set(ck["normalizers"]) == {"dnam"}
    assert list(pd.read_csv(out / "metrics.csv").columns)[3:5] == ["loss", "loss_dnam"]


def test_non_finite_loss_stops_with_a_clear_error():
    torch.manual_seed(0)
    model = MultimodalMAE(MAEConfig(lengths={"rna": 64}, modalities=("rna",), hidden_size=16, num_heads=2,
                                    intermediate_size=16, layers={"rna": 1}, decoder_hidden_size=16, decoder_layers=1,
                                    decoder_heads=2, decoder_intermediate_size=16, patch_sizes={"rna": 16}))
    batch = {"rna": torch.rand(2, 64), "available": torch.ones(2, 3, dtype=torch.bool),
             "noise_rna": torch.rand(2, 4), "index": torch.arange(2)}
    batch["rna"][0, 5] = float("nan")
    opt = torch.optim.AdamW(model.parameters())
    with pytest.raises(FloatingPointError, match="non-finite loss at epoch 0, step 0"):
        train_one_epoch(model, [batch], opt, torch.device("cpu"), 0, step=0, lr_fn=lambda s: 1e-3,
                        modalities=("rna",), progress=False)


def test_table4_end_to_end(results):
    from imputmae.table4 import write_table4

    cfg = small_config(results, epochs=1)
    cks = {}
    for run in ("multimodal", "rna", "dnam", "wsi"):
        out = results / "pretrain" / run / "fold0"
        pretrain(cfg, run=run, fold=0, out_dir=out, progress=False)
        cks[(run, 0)] = out / "checkpoint.pt"
    table, per_fold, imputation = table4(cfg, checkpoints=cks)
    assert list(table.index) == ["Multimodal pretraining", "Unimodal pretraining"]
    assert list(table.columns) == ["WSI", "RNA", "DNAm"] and table.notna().all().all()
    assert set(per_fold["run"]) == {"multimodal", "rna", "dnam", "wsi"}
    assert set(imputation["modality"]) == {"rna", "dnam", "wsi"} and (imputation["train_mean_mse"] > 0).all()
    # the synthetic omics share one latent factor: the ridge reference must beat the mean clearly
    ridge = imputation.set_index("modality")["ridge_ratio"]
    assert ridge["rna"] < 0.8 and ridge["dnam"] < 0.8 and ridge.isna()["wsi"]
    # evaluation is deterministic (seeded noise and tiles)
    again, _, _ = table4(cfg, checkpoints=cks)
    pd.testing.assert_frame_equal(table, again)
    # multimodal on two folds, unimodal on fold 0 (pretrain.unimodal_folds: 1): both rows on fold 0's patients,
    # the imputation table on both folds
    out = results / "pretrain" / "multimodal" / "fold1"
    pretrain(cfg, run="multimodal", fold=1, out_dir=out, progress=False)
    two, two_folds, two_imputation = table4(cfg, checkpoints={**cks, ("multimodal", 1): out / "checkpoint.pt"})
    pd.testing.assert_frame_equal(two, table)
    assert set(two_folds.query("run == 'multimodal'")["fold"]) == {0, 1}
    assert (two_imputation["folds"] == 2).all()
    write_table4(results / "tables", table, per_fold, imputation, n_folds=1)
    csv = pd.read_csv(results / "tables" / "table4.csv", index_col=0)
    assert list(csv.columns) == ["WSI", "RNA", "DNAm"]
    assert "| Multimodal pretraining |" in (results / "tables" / "table4.md").read_text()


def test_preempted_cli_exit_code_is_distinct():
    assert EXIT_PREEMPTED not in (0, 1, 2) and EXIT_PREEMPTED < 128


# ---------------------------------------------------------------------------------------------------- DDP


def _ddp_worker(rank, world, port, root, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    import imputmae.data as d
    from _synthetic_results import StandInNormalizer, small_config as sc

    d.make_normalizer = lambda kind, cfg: StandInNormalizer(kind, cfg["omics"][kind]["patch_size"])
    pretrain(sc(root, epochs=2), run="multimodal", fold=0, out_dir=out, progress=False)
    torch.distributed.destroy_process_group()


@pytest.mark.parametrize("complete", [pytest.param(True, id="all-modalities"),     # ~10 s: in the default run
                                      pytest.param(False, id="mixed-modality-sets", marks=pytest.mark.slow)])
def test_ddp_two_ranks_equal_one_rank(tmp_path, monkeypatch, complete):
    """Same global batch: 2 gloo ranks x 4 == 1 process x 8, also when ranks hold different modality sets."""
    use_stand_in_normalizer(monkeypatch)
    root = tmp_path / "results"
    write_results(root, complete=complete)
    data.write_splits(data.make_splits(data.select_split_patients(data.load_patients(root, ["A", "B"])), 3, 0),
                      root / "splits.parquet")
    torch.set_num_threads(1)
    one = pretrain(small_config(root, epochs=2), run="multimodal", fold=0, out_dir=root / "one", progress=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_ddp_worker, args=(2, port, root, root / "two"), nprocs=2, join=True)
    a, b = load_checkpoint(root / "one" / "checkpoint.pt"), load_checkpoint(root / "two" / "checkpoint.pt")
    assert a["step"] == b["step"] == (8 if complete else 10)
    for k in a["model"]:
        x, y = a["model"][k], b["model"][k]
        if k.endswith("attn.qkv.bias"):
            # the key bias has an exactly zero gradient (softmax is shift invariant): Adam turns float noise into
            # steps of size lr, so only the query and value biases are comparable
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4, msg=k)
    two = pd.read_csv(root / "two" / "metrics.csv")
    for key in ("loss", "loss_rna", "loss_dnam", "loss_wsi"):
        assert two[key].tolist() == pytest.approx([r[key] for r in one["history"]], rel=1e-6), key


@pytest.mark.slow
def test_compiled_pretraining_equals_eager(results):
    """pretrain.compile: the torch.compile'd run trains the same model (losses and weights within float
    tolerance) and writes the same plain checkpoint keys (~1-2 min: compilation)."""
    pytest.importorskip("torch._inductor")
    eager = pretrain(small_config(results), run="multimodal", fold=0, out_dir=results / "eager", progress=False)
    comp = pretrain(small_config(results, compile=True), run="multimodal", fold=0, out_dir=results / "compiled",
                    progress=False)
    for key in ("loss", "loss_rna", "loss_dnam", "loss_wsi"):
        assert [r[key] for r in comp["history"]] == pytest.approx([r[key] for r in eager["history"]], rel=1e-4), key
    a = load_checkpoint(results / "eager" / "checkpoint.pt")["model"]
    b = load_checkpoint(results / "compiled" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if k.endswith("attn.qkv.bias"):   # the key bias: zero gradient up to float noise (see the DDP test)
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-3, msg=k)
