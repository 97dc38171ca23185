"""The code lists the rules depend on, with the aliases and spellings they accept, for
`trialflow forms --codes` and docs/clinical-rules.md ("Drug names, aliases and spellings").

Nothing is defined here: the drug lists are those of the eligibility rules
(workflow/eligibility.py), the aliases and spelling variants those of
workflow/instruments/codes.py, so what is shown is what the rules use.
"""

from __future__ import annotations

import re
from typing import Final

from workflow.eligibility import (
    B_CELL_BIOLOGICS,
    BACKGROUND_CLASSES,
    CYTOTOXIC_DRUGS,
    REFRACTORY_OUTCOMES,
)
from workflow.forms import FORMS
from workflow.instruments.codes import (
    DRUG_ALIASES,
    EXCLUSION_CHECKLIST,
    GLUCOCORTICOID_FACTORS,
    INCLUSION_CRITERIA,
    SCREEN_FAILURE_OTHER_REASONS,
    SCREEN_FAILURE_REASONS,
    SPELLING_VARIANTS,
    spelling_key,
)

# (name, what uses it, the codes): the drug lists of the rules, in the order the docs give them.
_DRUG_LISTS: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("glucocorticoids", "refractory (a glucocorticoid), stable_background_therapy (prednisone "
     "equivalents), medication.drug when drug_class=glucocorticoid",
     tuple(GLUCOCORTICOID_FACTORS)),
    ("cytotoxic_drugs", "refractory (cyclophosphamide or mycophenolate mofetil)",
     tuple(sorted(CYTOTOXIC_DRUGS))),
    ("b_cell_biologics", "refractory (belimumab or rituximab)", tuple(sorted(B_CELL_BIOLOGICS))),
)


def aliases_of(drug: str) -> list[str]:
    """The aliases (codes.DRUG_ALIASES) that name `drug`, sorted."""
    return sorted(alias for alias, name in DRUG_ALIASES.items() if name == drug)


def other_spelling(code: str) -> str | None:
    """`code` in its other spelling (British <-> American), None when it has only one."""
    american = spelling_key(code)
    if american != code.lower():
        return american
    british = code
    for british_part, american_part in SPELLING_VARIANTS:  # a suffix, or a word's start
        where = "" if british_part.startswith("is") else "(?<![a-z])"
        british = re.sub(where + american_part, british_part, british)
    return british if british != code else None


def spelling_pairs() -> list[dict[str, str]]:
    """Every form, field and code of the forms that is also accepted in another spelling."""
    seen: dict[str, dict[str, str]] = {}
    for spec in FORMS.values():
        for field in spec.fields:
            for code, what in ((field.code, f"field of {spec.code}"),
                               *((value, f"code of {spec.code}.{field.code}")
                                 for value in field.allowed)):
                other = other_spelling(code)
                if other is not None and code not in seen:
                    seen[code] = {"code": code, "also": other, "where": what}
    for code in SCREEN_FAILURE_REASONS:
        other = other_spelling(code)
        if other is not None and code not in seen:
            seen[code] = {"code": code, "also": other, "where": "screen-fail --reason"}
    return sorted(seen.values(), key=lambda item: item["code"])


def describe_codes() -> dict[str, object]:
    """The code lists of `trialflow forms --codes` (JSON-serialisable)."""
    drugs = [{"list": name, "used_by": used_by,
              "drugs": [{"drug": drug, "aliases": aliases_of(drug)} for drug in codes]}
             for name, used_by, codes in _DRUG_LISTS]
    return {
        "drug_lists": drugs,
        "drug_aliases": dict(sorted(DRUG_ALIASES.items())),
        "background_classes": list(BACKGROUND_CLASSES),
        "refractory_outcomes": sorted(REFRACTORY_OUTCOMES),
        "screen_failure_reasons": {
            "inclusion": list(INCLUSION_CRITERIA),
            "exclusion": list(EXCLUSION_CHECKLIST),
            "other": list(SCREEN_FAILURE_OTHER_REASONS),
        },
        "spellings": spelling_pairs(),
        "spelling_variants": [{"british": british, "american": american}
                              for british, american in SPELLING_VARIANTS],
    }
