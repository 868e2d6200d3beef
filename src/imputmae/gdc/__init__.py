"""Acquisition from the NCI Genomic Data Commons: manifest, per-patient selection, verified downloads, clinical labels.

The method and its decisions: docs/design.md, ``imputmae.gdc``.
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
