"""GDC filters: the three modalities' /files queries, and an evaluator of GDC filters, fields and
pages (what the mirror and the test server answer with).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

log = logging.getLogger(__name__)

Modality = Literal["rna", "dnam", "wsi"]
MODALITIES: tuple[Modality, ...] = ("rna", "dnam", "wsi")

DNAM_PLATFORMS = ("Illumina Human Methylation 450", "Illumina Human Methylation 27")


# ----------------------------------------------------------------------------------------------------- filters


def _in(field: str, values: Sequence[str]) -> dict[str, Any]:
    return {"op": "in", "content": {"field": field, "value": list(values)}}


# The three modalities as GDC /files filters (field names as the API documents them).
MODALITY_FILTERS: dict[Modality, list[dict[str, Any]]] = {
    "rna": [
        _in("data_category", ["Transcriptome Profiling"]),
        _in("data_type", ["Gene Expression Quantification"]),
        _in("experimental_strategy", ["RNA-Seq"]),
        _in("analysis.workflow_type", ["STAR - Counts"]),
    ],
    "dnam": [
        _in("data_category", ["DNA Methylation"]),
        _in("data_type", ["Methylation Beta Value"]),
        _in("platform", list(DNAM_PLATFORMS)),
    ],
    "wsi": [
        _in("data_type", ["Slide Image"]),
        _in("experimental_strategy", ["Diagnostic Slide"]),
        _in("data_format", ["SVS"]),
    ],
}

FILE_FIELDS: tuple[str, ...] = (
    "file_id", "file_name", "md5sum", "file_size", "state", "access", "data_category", "data_type", "data_format",
    "experimental_strategy", "platform", "analysis.workflow_type", "cases.case_id", "cases.submitter_id",
    "cases.project.project_id", "cases.samples.submitter_id", "cases.samples.sample_type",
)
CASE_FIELDS: tuple[str, ...] = (
    "case_id", "submitter_id", "project.project_id", "demographic.vital_status", "demographic.days_to_death",
    "diagnoses.days_to_last_follow_up", "follow_ups.days_to_follow_up",
)
def project_filter(projects: Sequence[str], field: str = "cases.project.project_id") -> dict[str, Any]:
    """``{"op": "in", ...}`` on the project ids (``project.project_id`` on /cases)."""
    if not projects:
        raise ValueError("at least one GDC project id is needed (e.g. TCGA-BRCA)")
    return _in(field, projects)


def modality_filters(projects: Sequence[str], modality: Modality) -> dict[str, Any]:
    """The /files filters for one modality of ``projects``: an ``and`` of ``in`` clauses."""
    return {"op": "and", "content": [project_filter(projects), *MODALITY_FILTERS[modality]]}


def case_filters(projects: Sequence[str]) -> dict[str, Any]:
    """The /cases filters for ``projects``."""
    return {"op": "and", "content": [project_filter(projects, "project.project_id")]}


def field_values(hit: Any, field: str) -> list[Any]:
    """Every value at dotted ``field`` in a nested hit, descending into lists (``cases.project.project_id``)."""
    values = [hit]
    for part in field.split("."):
        nxt: list[Any] = []
        for v in values:
            if isinstance(v, list):
                nxt.extend(x.get(part) for x in v if isinstance(x, Mapping) and part in x)
            elif isinstance(v, Mapping) and part in v:
                nxt.append(v[part])
        values = nxt
    out: list[Any] = []
    for v in values:
        out.extend(v if isinstance(v, list) else [v])
    return [v for v in out if v is not None]


def _strip(field: str, endpoint: str | None) -> str:
    return field[len(endpoint) + 1:] if endpoint and field.startswith(endpoint + ".") else field


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return str(a) == str(b)


def _compare(op: str, a: Any, b: Any) -> bool:
    try:
        x, y = float(a), float(b)
    except (TypeError, ValueError):
        x, y = str(a), str(b)  # type: ignore[assignment]
    return {"<": x < y, "<=": x <= y, ">": x > y, ">=": x >= y}[op]


def match_filters(filters: Mapping[str, Any] | None, hit: Mapping[str, Any], endpoint: str | None = None) -> bool:
    """Whether ``hit`` satisfies GDC ``filters`` (ops: and, or, not, in, exclude, =, !=, <, <=, >, >=, is, not).

    Fields are dotted paths into the nested hit; a list on the way matches when any element does (as the API
    does). ``endpoint`` ("files" or "cases") lets a field carry the endpoint's prefix (``files.data_type``).

    Raises:
        ValueError: an unknown op or a malformed clause (the API answers 400 to those).
    """
    if not filters:
        return True
    op = str(filters.get("op", "")).lower()
    content = filters.get("content")
    if op in ("and", "or"):
        if not isinstance(content, list):
            raise ValueError(f"filters: '{op}' needs a list of clauses, got {content!r}")
        results = (match_filters(c, hit, endpoint) for c in content)
        return all(results) if op == "and" else any(results)
    if op == "not" and isinstance(content, Mapping) and "op" in content:
        return not match_filters(content, hit, endpoint)
    if not isinstance(content, Mapping) or "field" not in content:
        raise ValueError(f"filters: '{op}' needs {{'field': ..., 'value': ...}}, got {content!r}")
    have = field_values(hit, _strip(str(content["field"]), endpoint))
    value = content.get("value")
    if op in ("in", "exclude"):
        wanted = value if isinstance(value, list) else [value]
        found = any(_same(h, w) for h in have for w in wanted)
        return found if op == "in" else not found
    if op == "=":
        return any(_same(h, value) for h in have)
    if op == "!=":
        return not any(_same(h, value) for h in have)
    if op in ("<", "<=", ">", ">="):
        return any(_compare(op, h, value) for h in have)
    if op == "is":  # {"op": "is", "content": {"field": f, "value": "missing"}}
        return not have if str(value).lower() == "missing" else bool(have)
    if op == "not":
        return bool(have) if str(value).lower() == "missing" else not have
    raise ValueError(f"filters: unknown op {op!r}")


def project_fields(hit: Mapping[str, Any], fields: Sequence[str] | None, endpoint: str | None = None) -> dict[str, Any]:
    """The part of ``hit`` that the API returns for ``fields`` (nesting kept; ``id`` always; all when ``None``)."""
    if not fields:
        return dict(hit)
    out: dict[str, Any] = {"id": hit["id"]} if "id" in hit else {}
    for f in fields:
        _copy_path(hit, out, _strip(f, endpoint).split("."))
    return out


def _copy_path(src: Any, dst: dict[str, Any], parts: list[str]) -> None:
    key, rest = parts[0], parts[1:]
    if not isinstance(src, Mapping) or key not in src:
        return
    value = src[key]
    if not rest or value is None:
        dst[key] = value
    elif isinstance(value, list):
        existing = dst.setdefault(key, [{} for _ in value])
        for s, d in zip(value, existing):
            _copy_path(s, d, rest)
    else:
        _copy_path(value, dst.setdefault(key, {}), rest)


def paginate(hits: Sequence[Mapping[str, Any]], from_: int, size: int,
             sort: str | None = None) -> dict[str, Any]:
    """One page of ``hits`` as the API's ``data`` object (``hits`` and ``pagination``); sort as ``field[:asc|desc]``."""
    rows = list(hits)
    if sort:
        field, _, order = sort.partition(":")
        rows.sort(key=lambda h: [str(v) for v in field_values(h, field)], reverse=order == "desc")
    page = rows[from_:from_ + size]
    return {
        "hits": page,
        "pagination": {"count": len(page), "total": len(rows), "size": size, "from": from_, "sort": sort or "",
                       "page": from_ // size + 1 if size else 1, "pages": math.ceil(len(rows) / size) if size else 1},
    }


