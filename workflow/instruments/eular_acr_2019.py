"""EULAR/ACR 2019 classification criteria for systemic lupus erythematosus."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from workflow.errors import InvalidInput
from workflow.instruments import _validate as check
from workflow.instruments.codes import (
    EULAR_ACR_2019_CRITERIA,
    EULAR_ACR_2019_DOMAINS,
    EULAR_ACR_2019_IMMUNOLOGIC_DOMAINS,
)
from workflow.instruments.sources import ARINGER_2019

# Fixed by the published criteria, not protocol settings.
ANA_ENTRY_TITER: Final = 80
CLASSIFICATION_POINTS: Final = 10

_TITER_TEXT: Final = re.compile(r"\s*(?:1\s*:\s*)?(\d{1,9})\s*")  # int() of 5000 digits fails


@dataclass(frozen=True)
class DomainScore:
    domain: str
    kind: str
    present: tuple[str, ...]
    counted: str | None
    points: int


@dataclass(frozen=True)
class EularAcr2019Result:
    classified: bool
    points: int
    entry_criterion_met: bool
    ana_titer: str | None
    clinical_points: int
    immunologic_points: int
    domains: tuple[DomainScore, ...]
    explanation: str


# Source: Aringer M et al., Ann Rheum Dis 2019;78:1151-9: entry criterion ANA >= 1:80 on HEp-2.
def parse_ana_titer(value: object, field: str = "ana_titer") -> int:
    """The reciprocal of an ANA titre: 80, "80" and "1:80" all give 80; 0 is not a titre."""
    reciprocal: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        reciprocal = value
    elif isinstance(value, str):
        match = _TITER_TEXT.fullmatch(value)
        reciprocal = int(match.group(1)) if match else None
    if reciprocal is None or reciprocal < 1:
        raise InvalidInput(
            f"{field} must be a titre such as 1:80 or its reciprocal 80, got {check.shown(value)}.",
            field=field,
        )
    return reciprocal


# Source: Aringer M et al., Ann Rheum Dis 2019;78:1151-9, Figure 1 (entry, domains, weights).
def classify_eular_acr_2019(
    ana_titer: int | str | None, criteria: Iterable[str]
) -> EularAcr2019Result:
    """Classify: ANA >= 1:80 ever, highest criterion per domain, >= 10 points, >= 1 clinical.

    `ana_titer` None means no positive ANA on record; `criteria` are the criterion codes ever
    present without a more likely explanation than SLE.
    """
    present = check.codes(criteria, "criteria", EULAR_ACR_2019_CRITERIA, "EULAR/ACR 2019 criterion")
    titer = None if ana_titer is None else parse_ana_titer(ana_titer)
    entry = titer is not None and titer >= ANA_ENTRY_TITER

    domains: list[DomainScore] = []
    for domain, weights in EULAR_ACR_2019_DOMAINS.items():
        kind = "immunologic" if domain in EULAR_ACR_2019_IMMUNOLOGIC_DOMAINS else "clinical"
        found = tuple(code for code in weights if code in present)
        # Ties cannot happen in the published table except hematologic 4/4; either counts 4.
        best = max(found, key=lambda code: weights[code], default=None)
        domains.append(DomainScore(domain, kind, found, best, weights[best] if best else 0))
    clinical = sum(d.points for d in domains if d.kind == "clinical")
    immunologic = sum(d.points for d in domains if d.kind == "immunologic")
    points = clinical + immunologic
    has_clinical = any(d.counted for d in domains if d.kind == "clinical")
    classified = entry and points >= CLASSIFICATION_POINTS and has_clinical

    if titer is None:
        entry_text = "Entry criterion not met: no positive ANA titre on record."
    elif entry:
        entry_text = f"Entry criterion met: ANA 1:{titer} is at least 1:{ANA_ENTRY_TITER}."
    else:
        entry_text = f"Entry criterion not met: ANA 1:{titer} is below 1:{ANA_ENTRY_TITER}."
    counted_text = "; ".join(_domain_text(d) for d in domains if d.counted) or "none"
    if not entry:
        verdict = "not classified as SLE because the entry criterion is not met"
    elif points < CLASSIFICATION_POINTS:
        verdict = f"not classified as SLE because {points} < {CLASSIFICATION_POINTS} points"
    elif not has_clinical:
        verdict = "not classified as SLE because no clinical criterion is present"
    else:
        verdict = (
            f"classified as SLE ({points} >= {CLASSIFICATION_POINTS} points "
            "with at least one clinical criterion)"
        )
    explanation = (
        f"{entry_text} Counted per domain (highest weight only): {counted_text}. "
        f"Total {points} points (clinical {clinical}, immunologic {immunologic}); "
        f"{verdict} ({ARINGER_2019})."
    )
    shown_titer = None if titer is None else f"1:{titer}"
    return EularAcr2019Result(
        classified, points, entry, shown_titer, clinical, immunologic, tuple(domains), explanation
    )


def _domain_text(domain: DomainScore) -> str:
    text = f"{domain.domain} {domain.counted} {domain.points}"
    others = [code for code in domain.present if code != domain.counted]
    if others:
        text += f" (also present, not added: {', '.join(others)})"
    return text
