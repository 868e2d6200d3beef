"""Acquisition from the NCI Genomic Data Commons: manifest, per-patient selection, verified downloads, clinical labels.

One file per job: ``_filters`` (the modalities' queries; a GDC filter evaluator), ``_transport`` (API or mirror,
retries, paging), ``_manifest`` (manifest and selection), ``_download``, ``_clinical``; their public names are
re-exported here.

Everything goes through a :class:`Transport`: :class:`HttpTransport` talks to the GDC API (``--api URL``),
:class:`MirrorTransport` reads a local copy in gdc-client layout (``--mirror DIR``: ``files.json``,
``cases.json``, ``status.json``, ``data/<file_id>/<file_name>``). A transport answers three questions (the data
release, one page of ``/files`` or ``/cases`` hits, the bytes of a file from an offset); everything after it
(filters, pagination, manifest rows, selection, verification, clinical parsing) is the same code. The mirror
evaluates GDC filters with :func:`match_filters`, the evaluator the test server in ``tests/gdc_server.py`` uses.

Selection rule (:func:`select_files`), written down once here and in the README:

* RNA and DNAm: one file per patient. Candidates are the patient's files whose sample type is in
  ``sample_types`` (config ``gdc.sample_types``, a preference order; other sample types, e.g. Solid Tissue Normal,
  are never chosen). Ties are broken, in order, by: the most preferred sample type; for DNAm, the 450k array before
  the 27k; the sample barcode ascending (vial ``01A`` before ``01B``); the file_id ascending.
* WSI: every Diagnostic Slide (experimental strategy ``Diagnostic Slide``; tissue slides ``TS`` are frozen sections
  and are not diagnostic) of the patient's most preferred sample type that has one. The WSI stage picks among them.

Downloads (:func:`download_files`) land in ``DEST/<file_id>/<file_name>`` (gdc-client's layout) through
``<file_name>.part``; the md5 and size from ``/files`` are checked before the rename, so a final name always holds
verified bytes. A ``.part`` left by an interrupted run is resumed with an HTTP ``Range`` request (or by copying
from the offset, for a mirror). A file that still fails after the retries is reported with its reason (status
``failed``) and the run goes on; the modality counts as missing for that patient.
"""

from __future__ import annotations

from imputmae.gdc._filters import (
    Modality,
    MODALITIES,
    DNAM_PLATFORMS,
    MODALITY_FILTERS,
    FILE_FIELDS,
    CASE_FIELDS,
    project_filter,
    modality_filters,
    case_filters,
    match_filters,
    field_values,
    project_fields,
    paginate,
)
from imputmae.gdc._transport import (
    GDCError,
    RetryableError,
    Token,
    Transport,
    HttpTransport,
    MirrorTransport,
    open_transport,
    read_token,
    iter_hits,
)
from imputmae.gdc._manifest import (
    MANIFEST_COLUMNS,
    manifest_rows,
    fetch_manifest,
    write_parquet,
    read_manifest,
    select_files,
)
from imputmae.gdc._download import (
    REPORT_COLUMNS,
    USABLE_STATUSES,
    usable_downloads,
    download_files,
    md5_file,
)
from imputmae.gdc._clinical import (
    CLINICAL_COLUMNS,
    QC_COLUMNS,
    clinical_table,
    fetch_clinical,
)

__all__ = [
    "Modality",
    "MODALITIES",
    "DNAM_PLATFORMS",
    "MODALITY_FILTERS",
    "FILE_FIELDS",
    "CASE_FIELDS",
    "project_filter",
    "modality_filters",
    "case_filters",
    "match_filters",
    "field_values",
    "project_fields",
    "paginate",
    "GDCError",
    "RetryableError",
    "Token",
    "Transport",
    "HttpTransport",
    "MirrorTransport",
    "open_transport",
    "read_token",
    "iter_hits",
    "MANIFEST_COLUMNS",
    "manifest_rows",
    "fetch_manifest",
    "write_parquet",
    "read_manifest",
    "select_files",
    "REPORT_COLUMNS",
    "USABLE_STATUSES",
    "usable_downloads",
    "download_files",
    "md5_file",
    "CLINICAL_COLUMNS",
    "QC_COLUMNS",
    "clinical_table",
    "fetch_clinical",
]
