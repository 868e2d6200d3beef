"""Fine-tuning inputs: each patient's normalised modalities completed by the decoder, and the frozen layers' cache.

:class:`PatientInputs` holds what a patient has; :func:`complete_inputs` imputes what they lack with the pretrained
decoder; :func:`frozen_features` runs every encoder block but the last (``trainable_blocks``) once per patient
(exact: the frozen layers do not change while fine-tuning), and :func:`collate_batch` pads a batch of those hidden
states for the network.
The decisions behind them: docs/finetune.md.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from imputmae.choices import CacheDtype, MissingInputs
from imputmae.modalities import active, is_image, names, vector_modalities
from imputmae.model import MultimodalMAE

ReconCache = dict[str, dict[str, Tensor]]   # {patient: {modality: the decoder's reconstruction}} (iter_complete_inputs)


@dataclass
class PatientInputs:
    """Normalised model inputs of a set of patients (what the MAE was pretrained on).

    ``omics[m]``: {patient: float32 [L_m]} in [0, 1] for each vector modality m; ``tiles``: {patient: uint8
    [K, H, W, 3]} (docs/layout.md) of the image modality (the registry's one image entry, wsi), an array or a
    :class:`TileFile` (read when used: what the file readers give).
    A patient absent from a mapping does not have that modality.
    """

    omics: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    tiles: dict[str, np.ndarray | TileFile] = field(default_factory=dict)

    def has(self, patient: str, m: str) -> bool:
        return patient in self.tiles if is_image(m) else patient in self.omics.get(m, {})

    def patients(self) -> list[str]:
        out = set(self.tiles)
        for d in self.omics.values():
            out |= set(d)
        return sorted(out)


class TileFile:
    """A patient's tiles on disk, uint8 [K, H, W, 3] (``<patient>.npy``), read only when indexed.

    Each read maps the file, copies the slice and unmaps it again, so the pages read do not stay in the process
    (a memory map kept open for every patient of a cohort would add each slide's 19.7 MB, at K = 100 and 256 px,
    to the resident set as the feature pass touches it). ``shape`` comes from the header alone.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        arr = np.load(self.path, mmap_mode="r")
        self.shape, self.dtype = tuple(arr.shape), arr.dtype
        del arr

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        arr = np.load(self.path, mmap_mode="r")
        out = np.array(arr[key], copy=True)
        del arr
        return out

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self[:]
        return out if dtype is None else out.astype(dtype)


def _tiles_to_tensor(tiles: np.ndarray | TileFile, max_tiles: int | None) -> Tensor:
    """uint8 [K, H, W, 3] (the first ``max_tiles``) -> float [K, 3, H, W] in [0, 1]."""
    return torch.from_numpy(np.array(tiles[:max_tiles], copy=True)).permute(0, 3, 1, 2).float().div_(255.0)


def _n_tiles(inputs: PatientInputs, p: str, max_tiles: int | None) -> int:
    n = len(inputs.tiles[p])
    return n if max_tiles is None else min(n, max_tiles)


@torch.no_grad()
def iter_complete_inputs(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str],
                         modalities: Sequence[str], missing: MissingInputs = "impute",
                         max_tiles: int | None = None, rows: int = 128, recon_cache: ReconCache | None = None
                         ) -> Iterator[tuple[list[int], dict[str, dict[str, Tensor]], dict[str, np.ndarray]]]:
    """:func:`complete_inputs` a group of patients at a time: yields (positions in ``patients``, data, imputed)
    for consecutive groups of about ``rows`` rows (a patient's tiles, or one row for a patient without tiles; a
    patient with more tiles than ``rows`` is a group alone), so that memory is bounded by ``rows``, not by the cohort.

    Within a group the decoder imputes the patients that share the same available modalities in one batch of
    ``rows`` rows at most (:meth:`MultimodalMAE.impute` depends only on each row's own inputs; one availability
    pattern per batch keeps its per-modality "nobody has it" branch the same as one patient at a time).

    ``recon_cache`` ({patient: {modality: reconstruction}}, filled as patients are imputed): a patient whose every
    needed reconstruction is already there is not imputed again. Share one only between calls with the same
    ``mae`` and the same patient list, as Table 3's rows do (:mod:`imputmae.baselines.rows`): the second call then
    takes every reconstruction from the first, the same values. It holds the reconstructions only (a vector per
    missing omics modality, one tile per missing slide).
    """
    mae.eval()
    dev = next(mae.parameters()).device
    patients = list(patients)
    group: list[int] = []
    n_rows = 0
    for i, p in enumerate(patients):
        if not any(inputs.has(p, m) for m in names()):
            raise ValueError(f"patient {p}: no modality available")
        k = _n_tiles(inputs, p, max_tiles) if p in inputs.tiles else 1
        if group and n_rows + k > rows:
            yield group, *_complete_group(mae, inputs, [patients[j] for j in group], modalities, missing, max_tiles,
                                          rows, dev, recon_cache)
            group, n_rows = [], 0
        group.append(i)
        n_rows += k
    if group:
        yield group, *_complete_group(mae, inputs, [patients[j] for j in group], modalities, missing, max_tiles,
                                      rows, dev, recon_cache)


def _complete_group(mae: MultimodalMAE, inputs: PatientInputs, patients: list[str], modalities: Sequence[str],
                    missing: MissingInputs, max_tiles: int | None, rows: int, dev: torch.device,
                    recon_cache: ReconCache | None = None
                    ) -> tuple[dict[str, dict[str, Tensor]], dict[str, np.ndarray]]:
    """One group of :func:`iter_complete_inputs`: data[m][patient], imputed[m] bool [len(patients)]."""
    have = {p: tuple(inputs.has(p, m) for m in names()) for p in patients}
    tiles = {p: _tiles_to_tensor(inputs.tiles[p], max_tiles).to(dev) for p in patients if p in inputs.tiles}
    omics = {p: {m: torch.from_numpy(np.asarray(inputs.omics[m][p], np.float32)).to(dev)
                 for m in vector_modalities() if inputs.has(p, m)} for p in patients}
    need = {p: [m for m in modalities if not inputs.has(p, m)] for p in patients}
    recon: dict[str, dict[str, Tensor]] = {p: {} for p in patients}
    if missing == "impute":
        cache = recon_cache if recon_cache is not None else {}
        todo = [p for p in patients if need[p] and not all(m in cache.get(p, {}) for m in need[p])]
        for pattern in dict.fromkeys(have[p] for p in todo):
            who = [p for p in todo if have[p] == pattern]
            _impute_rows(mae, who, tiles, omics, pattern, {m for p in who for m in need[p]}, rows, dev, recon)
        for p in patients:
            if need[p] and p not in todo:
                recon[p] = {m: cache[p][m] for m in need[p]}
        if recon_cache is not None:
            for p in todo:
                recon_cache.setdefault(p, {}).update(recon[p])
    data: dict[str, dict[str, Tensor]] = {m: {} for m in modalities}
    imputed = {m: np.zeros(len(patients), bool) for m in modalities}
    for i, p in enumerate(patients):
        for m in modalities:
            if inputs.has(p, m):
                data[m][p] = tiles[p] if is_image(m) else omics[p][m]
            elif m in recon[p]:
                data[m][p] = recon[p][m]
                imputed[m][i] = True
    return data, imputed


def _impute_rows(mae: MultimodalMAE, who: list[str], tiles: dict[str, Tensor], omics: dict[str, dict[str, Tensor]],
                 pattern: tuple[bool, ...], need: set[str], rows: int, dev: torch.device,
                 recon: dict[str, dict[str, Tensor]]) -> None:
    """Decoder imputation of patients ``who`` (all with availability ``pattern``), batches of <= ``rows`` rows.

    A patient with tiles gives one row per tile (its omics repeated), and its imputed omics are the mean over its
    tiles; a patient without tiles gives one row, and its imputed tile is that row's. Writes recon[p][m]."""
    owner = [j for j, p in enumerate(who) for _ in range(tiles[p].shape[0] if p in tiles else 1)]
    owner_t = torch.tensor(owner, device=dev)
    reg = active()
    image = [m for m in reg.images() if pattern[reg.index(m)]]   # the image modality, when these patients have it
    all_tiles = (torch.cat([tiles[p] for p in who]) if len(who) > 1 else tiles[who[0]]) if image else None
    sums: dict[str, Tensor] = {}
    first_tile: dict[int, Tensor] = {}
    for s in range(0, len(owner), rows):
        own = owner_t[s:s + rows]
        batch: dict[str, Tensor] = {"available": torch.tensor([pattern] * len(own), device=dev)}
        for m in reg.vectors():
            if pattern[reg.index(m)]:
                batch[m] = torch.stack([omics[who[j]][m] for j in own.tolist()])
        if all_tiles is not None:
            batch[image[0]] = all_tiles[s:s + rows]
        out = mae.impute(batch)
        for m in need:
            if is_image(m):
                for r, j in enumerate(own.tolist()):
                    first_tile.setdefault(j, out[m][r:r + 1])
            else:
                add = torch.zeros(len(who), out[m].shape[1], device=dev).index_add_(0, own, out[m])
                sums[m] = sums[m] + add if m in sums else add
    counts = torch.bincount(owner_t, minlength=len(who)).to(torch.float32)
    for j, p in enumerate(who):
        for m in need:
            recon[p][m] = first_tile[j] if is_image(m) else sums[m][j] / counts[j]


@torch.no_grad()
def complete_inputs(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str],
                    modalities: Sequence[str], missing: MissingInputs = "impute",
                    max_tiles: int | None = None) -> tuple[dict[str, dict[str, Tensor]], dict[str, np.ndarray]]:
    """Every patient's model input for each of ``modalities``, imputing the missing ones with the decoder.

    Returns (data, imputed): data[m][patient] = omics [L_pad] or tiles [K, 3, H, W] (float), absent when the
    patient lacks m and ``missing == "zero"``; imputed[m] = bool [P] (the modality was reconstructed).
    A patient with tiles has its missing omics imputed from each tile together with its omics, then averaged over
    tiles; a patient without tiles gets one imputed tile. Holds every patient at once: for a whole cohort use
    :func:`iter_complete_inputs` (what :func:`frozen_features` does).
    """
    patients = list(patients)
    data: dict[str, dict[str, Tensor]] = {m: {} for m in modalities}
    imputed = {m: np.zeros(len(patients), bool) for m in modalities}
    for pos, d, imp in iter_complete_inputs(mae, inputs, patients, modalities, missing, max_tiles):
        for m in modalities:
            data[m].update(d[m])
            imputed[m][pos] = imp[m]
    return data, imputed


def patient_rows(order: Sequence[str], patients: Sequence[str], what: str) -> np.ndarray:
    """Row positions [len(patients)] (int64) of ``patients`` in ``order``; a KeyError names the absent ones."""
    pos = {p: i for i, p in enumerate(order)}
    absent = [p for p in patients if p not in pos]
    if absent:
        raise KeyError(f"no {what} for patients {absent[:5]}")
    return np.array([pos[p] for p in patients], dtype=np.int64)


class MemoryNeeded(MemoryError):
    """A fine-tuning job would need more memory or disk than it has; the message names the rule, the figure and
    the setting to change."""


class FeatureStore:
    """One modality's frozen hidden states for a set of patients, in a file: rows [R, 1 + N, D] of ``dtype``
    (R = the patients' tiles, one row per omics patient), patient i's rows ``offsets[i]:offsets[i] + counts[i]``.

    The file is created in ``folder`` (default: the system's temporary folder, ``$TMPDIR``) and unlinked at once,
    so it disappears when the store is closed or the process ends, however it ends. Rows are written and read with
    ``os.pwrite``/``os.pread``: what the operating system caches of the file is page cache, reclaimable and outside
    the process's resident set; the process holds one batch. float16 halves the file (the last block then sees
    the hidden states rounded to 11 significant bits; float32 is exact).
    """

    def __init__(self, counts: Sequence[int], row_shape: tuple[int, ...], dtype: CacheDtype = "float32",
                 folder: str | Path | None = None, what: str = "features"):
        self.fd = -1
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)
        self.row_shape = tuple(int(d) for d in row_shape)
        self.dtype = np.dtype(dtype)
        self.row_bytes = int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.nbytes = int(self.counts.sum()) * self.row_bytes
        folder = Path(folder) if folder is not None else Path(tempfile.gettempdir())
        folder.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(folder).free
        if self.nbytes > free:
            raise MemoryNeeded(
                f"finetune: the frozen-feature cache of {what} needs {self.nbytes / 2**30:.1f} GiB in {folder}, "
                f"which has {free / 2**30:.1f} GiB free: point finetune.cache_dir (or $TMPDIR) at a larger disk, "
                f"or set finetune.cache_dtype: float16 (half the size)")
        fd, name = tempfile.mkstemp(prefix="imputmae-frozen-", suffix=".bin", dir=folder)
        os.unlink(name)
        self.fd = fd

    def write(self, i: int, h: Tensor) -> None:
        """Patient i's rows: h [counts[i], *row_shape]."""
        a = np.ascontiguousarray(h.detach().cpu().numpy().astype(self.dtype, copy=False))
        if a.shape != (self.counts[i], *self.row_shape):
            raise ValueError(f"patient row {i}: got {a.shape}, expected {(self.counts[i], *self.row_shape)}")
        os.pwrite(self.fd, a.tobytes(), int(self.offsets[i]) * self.row_bytes)

    def read(self, i: int) -> Tensor | None:
        """Patient i's rows as float32 [counts[i], *row_shape]; None when the patient has none."""
        n = int(self.counts[i])
        if n == 0:
            return None
        buf = os.pread(self.fd, n * self.row_bytes, int(self.offsets[i]) * self.row_bytes)
        a = np.frombuffer(buf, dtype=self.dtype).reshape(n, *self.row_shape)
        return torch.from_numpy(a.astype(np.float32))   # a copy (float16) or a writable one (float32)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()


@dataclass
class FrozenFeatures:
    """Hidden states entering each encoder's last block, per patient: ``store[m]`` holds patient i's
    [K_i, 1 + N_m, D] (K = 1 for omics, the number of tiles for WSI; none where absent), :meth:`h` reads them;
    ``present[m]`` bool [P] (False: zero embedding); ``imputed[m]`` bool [P]."""

    patients: list[str]
    store: dict[str, FeatureStore]
    present: dict[str, np.ndarray]
    imputed: dict[str, np.ndarray]

    def index(self, patients: Sequence[str]) -> np.ndarray:
        return patient_rows(self.patients, patients, "features")

    def h(self, m: str, i: int) -> Tensor | None:
        """Patient i's hidden states for m, float32 [K_i, 1 + N_m, D] on the CPU, or None."""
        return self.store[m].read(i)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.store.values())

    def own_rows(self, m: str) -> dict[str, int]:
        """{patient: row} of the patients whose own input of m is stored here (present, not imputed)."""
        if m not in self.store:
            return {}
        return {p: k for k, p in enumerate(self.patients) if self.present[m][k] and not self.imputed[m][k]}


def _frozen_hidden(enc: nn.Module, x: Tensor, trainable_blocks: int = 1) -> Tensor:
    """Unmasked encoder input through all blocks but the last ``trainable_blocks``: x [K, ...] -> [K, 1 + N, D]
    (exact: as ``encode``)."""
    tokens = enc.embed(x)
    cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    h = torch.cat([cls, tokens], dim=1)
    for blk in enc.blocks[:len(enc.blocks) - trainable_blocks]:
        h = blk(h)
    return h


def _rows_per_patient(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str], m: str,
                      missing: MissingInputs, max_tiles: int | None) -> list[int]:
    """How many cached rows each patient will have for m (0: absent and not imputed)."""
    if is_image(m):
        return [_n_tiles(inputs, p, max_tiles) if inputs.has(p, m) else int(missing == "impute") for p in patients]
    return [1 if inputs.has(p, m) or missing == "impute" else 0 for p in patients]


@torch.no_grad()
def frozen_features(mae: MultimodalMAE, inputs: PatientInputs, patients: Sequence[str], modalities: Sequence[str],
                    missing: MissingInputs = "impute", chunk: int = 64, max_tiles: int | None = None,
                    cache_dtype: CacheDtype = "float32", cache_dir: str | Path | None = None,
                    rows: int = 128, trainable_blocks: int = 1, reuse: FrozenFeatures | None = None
                    ) -> FrozenFeatures:
    """Impute (when asked) and run the frozen layers (every block but the last ``trainable_blocks``) once per
    patient into a :class:`FeatureStore` per modality.

    Patients go through in groups of about ``rows`` tile rows (:func:`iter_complete_inputs`), ``chunk`` rows at a
    time through the frozen blocks, and are written out before the next group is read: peak memory is one group's
    inputs and hidden states, whatever the number of patients. See :class:`FrozenFeatures`.

    ``reuse``: features computed earlier by the SAME encoders and ``trainable_blocks``; a patient's own (not imputed)
    input that is present and not imputed there is copied from it instead of being run again. What Table 3's rows
    share: the zero-filled store serves the training-mean-filled one, whose present inputs are the same.
    """
    from tqdm.auto import tqdm

    patients = list(patients)
    cfg = mae.cfg
    store = {m: FeatureStore(_rows_per_patient(mae, inputs, patients, m, missing, max_tiles),
                             (1 + cfg.n_patches(m), cfg.hidden_size), cache_dtype, cache_dir,
                             f"{m} ({len(patients)} patients)") for m in modalities}
    imputed = {m: np.zeros(len(patients), bool) for m in modalities}
    present = {m: np.zeros(len(patients), bool) for m in modalities}
    reused = {m: _reusable(reuse, m, store[m]) for m in modalities}
    bar = tqdm(total=len(patients), desc="frozen features", leave=False, disable=len(patients) < 50)
    for pos, data, imp in iter_complete_inputs(mae, inputs, patients, modalities, missing, max_tiles, rows):
        for m in modalities:
            imputed[m][pos] = imp[m]
            enc = mae.encoders[m]
            for j, i in enumerate(pos):
                p = patients[i]
                if p not in data[m]:
                    continue
                if p in reused[m] and not imp[m][j]:
                    store[m].write(i, reuse.h(m, reused[m][p]))
                    present[m][i] = True
                    continue
                x = data[m][p]
                x = mae._input({m: x if is_image(m) else x[None]}, m)
                store[m].write(i, torch.cat([_frozen_hidden(enc, x[j:j + chunk], trainable_blocks)
                                             for j in range(0, x.shape[0], chunk)]))
                present[m][i] = True
        bar.update(len(pos))
    bar.close()
    return FrozenFeatures(patients, store, present, imputed)


def _reusable(reuse: FrozenFeatures | None, m: str, like: FeatureStore) -> dict[str, int]:
    """{patient: row in ``reuse``} of the patients whose own input of m ``reuse`` holds (present, not imputed)."""
    if reuse is None or m not in reuse.store:
        return {}
    if reuse.store[m].row_shape != like.row_shape:
        raise ValueError(f"reuse: {m} features of shape {reuse.store[m].row_shape}, expected {like.row_shape} "
                         "(another encoder or trainable_blocks)")
    return reuse.own_rows(m)


def training_memory_bytes(cfg: Any, modalities: Sequence[str], batch_size: int, k_max: int,
                          trainable_blocks: int = 1, pool: str = "cls") -> int:
    """Estimated peak bytes of one training step of :class:`SurvivalModel` (host or device): per modality the batch
    of hidden states [B, K, 1 + N, D] float32 and what autograd keeps of the last block for it (its input, the
    norm's output, keys and values: 4 such tensors), plus the collated copy: 6x the batch. Omics have K = 1.
    Each further trainable block (``trainable_blocks`` > 1) runs on every token and keeps about 8 [1 + N, D]
    tensors, 2 of the MLP's [1 + N, intermediate] and 2 attention maps [heads, 1 + N, 1 + N] per row; so does the
    last block with ``pool="mean"`` (it runs on every token, not on the CLS row alone).
    The frozen-feature pass needs less (``rows`` tiles at a time). Grows with the batch, not with the cohort."""
    full = trainable_blocks - 1 + (pool == "mean")      # blocks that run on every token in the training step
    per = 0
    for m in modalities:
        rows, t = (k_max if is_image(m) else 1), 1 + cfg.n_patches(m)
        block = 8 * t * cfg.hidden_size + 2 * t * cfg.intermediate_size + 2 * cfg.num_heads * t * t
        per += rows * (6 * t * cfg.hidden_size + full * block)
    return 4 * batch_size * per + 2**28   # + 256 MiB for the model, optimizer and interpreter


def usable_memory_bytes() -> tuple[int, str]:
    """(bytes, where): the least of the job's memory limit (Slurm's ``SLURM_MEM_PER_NODE``, the cgroup's
    ``memory.max``) and the system's available memory (``MemAvailable``)."""
    found: list[tuple[int, str]] = []
    if os.environ.get("SLURM_MEM_PER_NODE", "").isdigit():
        found.append((int(os.environ["SLURM_MEM_PER_NODE"]) * 2**20, "the Slurm job (SLURM_MEM_PER_NODE)"))
    for f in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            v = Path(f).read_text().strip()
        except OSError:
            continue
        if v.isdigit() and int(v) < 2**60:
            found.append((int(v), f"the job's cgroup ({f})"))
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append((int(line.split()[1]) * 1024, "this machine (MemAvailable)"))
    except OSError:
        pass
    return min(found) if found else (2**62, "unknown")


def collate_batch(frozen: FrozenFeatures, idx: np.ndarray, modalities: Sequence[str],
                  device: torch.device | str = "cpu") -> dict[str, tuple[Tensor, Tensor, Tensor]]:
    """Patients ``idx`` of ``frozen`` as one padded batch on ``device``: feats[m] = (h [B, K_max, 1 + N_m, D],
    tile_mask [B, K_max], present [B] bool), the input of :meth:`SurvivalModel.forward`. Reads only these patients'
    rows from the store."""
    out = {}
    for m in modalities:
        st = frozen.store[m]
        counts = st.counts[idx]
        K = max(int(counts.max(initial=0)), 1)
        h = torch.zeros(len(idx), K, *st.row_shape)
        mask = torch.zeros(len(idx), K)
        for j, i in enumerate(idx):
            t = frozen.h(m, int(i))
            if t is not None:
                h[j, : t.shape[0]] = t
                mask[j, : t.shape[0]] = 1
        out[m] = (h.to(device), mask.to(device), torch.from_numpy(frozen.present[m][idx]).to(device))
    return out
