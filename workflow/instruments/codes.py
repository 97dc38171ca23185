"""Canonical codes of docs/clinical-rules.md, shared by instruments, forms and exports.

Every other module takes its code lists from here, so a code is spelled in one place.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

# SLEDAI-2K descriptors and weights (Gladman et al., J Rheumatol 2002).
SLEDAI2K_WEIGHTS: Final[dict[str, int]] = {
    "seizure": 8,
    "psychosis": 8,
    "organic_brain_syndrome": 8,
    "visual_disturbance": 8,
    "cranial_nerve_disorder": 8,
    "lupus_headache": 8,
    "cva": 8,
    "vasculitis": 8,
    "arthritis": 4,
    "myositis": 4,
    "urinary_casts": 4,
    "hematuria": 4,
    "proteinuria": 4,
    "pyuria": 4,
    "rash": 2,
    "alopecia": 2,
    "mucosal_ulcers": 2,
    "pleurisy": 2,
    "pericarditis": 2,
    "low_complement": 2,
    "increased_dna_binding": 2,
    "fever": 1,
    "thrombocytopenia": 1,
    "leukopenia": 1,
}
SLEDAI2K_DESCRIPTORS: Final[tuple[str, ...]] = tuple(SLEDAI2K_WEIGHTS)

# LLDAS: descriptors that block low disease activity whatever the score (Franklyn et al. 2016).
LLDAS_BLOCKING_DESCRIPTORS: Final[frozenset[str]] = frozenset(
    {
        "seizure", "psychosis", "organic_brain_syndrome", "visual_disturbance",
        "cranial_nerve_disorder", "lupus_headache", "cva", "vasculitis",
        "urinary_casts", "hematuria", "proteinuria", "pyuria",
        "pleurisy", "pericarditis", "fever",
    }
)

# EULAR/ACR 2019 domains: criterion -> weight; `clinical` says whether a domain is clinical.
EULAR_ACR_2019_DOMAINS: Final[dict[str, dict[str, int]]] = {
    "constitutional": {"fever": 2},
    "hematologic": {"leukopenia": 3, "thrombocytopenia": 4, "autoimmune_hemolysis": 4},
    "neuropsychiatric": {"delirium": 2, "psychosis": 3, "seizure": 5},
    "mucocutaneous": {
        "non_scarring_alopecia": 2,
        "oral_ulcers": 2,
        "subacute_cutaneous_or_discoid_lupus": 4,
        "acute_cutaneous_lupus": 6,
    },
    "serosal": {"pleural_or_pericardial_effusion": 5, "acute_pericarditis": 6},
    "musculoskeletal": {"joint_involvement": 6},
    "renal": {"proteinuria": 4, "renal_biopsy_class_2_or_5": 8, "renal_biopsy_class_3_or_4": 10},
    "antiphospholipid_antibodies": {"antiphospholipid_antibodies": 2},
    "complement_proteins": {"low_c3_or_low_c4": 3, "low_c3_and_low_c4": 4},
    "sle_specific_antibodies": {"anti_dsdna_or_anti_smith": 6},
}
EULAR_ACR_2019_IMMUNOLOGIC_DOMAINS: Final[frozenset[str]] = frozenset(
    {"antiphospholipid_antibodies", "complement_proteins", "sle_specific_antibodies"}
)
EULAR_ACR_2019_CRITERIA: Final[tuple[str, ...]] = tuple(
    code for domain in EULAR_ACR_2019_DOMAINS.values() for code in domain
)

# ASTCT CRS and ICANS inputs (Lee et al., Biol Blood Marrow Transplant 2019).
CRS_HYPOTENSION: Final[tuple[str, ...]] = (
    "none", "no_vasopressors", "one_vasopressor", "multiple_vasopressors",
)
CRS_HYPOXIA: Final[tuple[str, ...]] = ("none", "low_flow", "high_flow", "positive_pressure")
ICANS_CONSCIOUSNESS: Final[tuple[str, ...]] = (
    "normal", "awakens_spontaneously", "awakens_to_voice", "awakens_to_tactile", "unarousable",
)
ICANS_SEIZURE: Final[tuple[str, ...]] = ("none", "rapidly_resolving", "prolonged_or_repetitive")
ICANS_MOTOR: Final[tuple[str, ...]] = ("none", "deep_focal_weakness")
ICANS_CEREBRAL_EDEMA: Final[tuple[str, ...]] = ("none", "focal", "diffuse")

# Adverse events (CTCAE v5.0; ICH E2A).
CTCAE_GRADES: Final[dict[int, str]] = {
    1: "mild",
    2: "moderate",
    3: "severe or medically significant",
    4: "life-threatening",
    5: "death related to the AE",
}
SERIOUS_CRITERIA: Final[tuple[str, ...]] = (
    "death", "life_threatening", "hospitalisation", "disability",
    "congenital_anomaly", "important_medical_event",
)
RELATEDNESS: Final[tuple[str, ...]] = (
    "not_related", "unlikely", "possible", "probable", "definite",
)
RELATED: Final[frozenset[str]] = frozenset({"possible", "probable", "definite"})
AE_CATEGORIES: Final[tuple[str, ...]] = ("crs", "icans", "infection", "cytopenia", "other")

# Glucocorticoids: mg of the drug equivalent to 1 mg prednisone (prednisolone label table).
GLUCOCORTICOID_FACTORS: Final[dict[str, float]] = {
    "prednisone": 1.0,
    "prednisolone": 1.0,
    "methylprednisolone": 0.8,
    "triamcinolone": 0.8,
    "hydrocortisone": 4.0,
    "cortisone": 5.0,
    "dexamethasone": 0.15,
    "betamethasone": 0.15,
}

DRUG_CLASSES: Final[tuple[str, ...]] = (
    "glucocorticoid", "antimalarial", "immunosuppressant", "biologic", "other",
)
EXCLUSION_CHECKLIST: Final[tuple[str, ...]] = (
    "prior_cart_or_gene_therapy", "active_infection", "hbv_hcv_hiv_syphilis", "active_cns_lupus",
    "malignancy_5y", "pregnant_or_lactating", "live_vaccine_4w", "other_trial_3m",
    "severe_organ_dysfunction",
)
INCLUSION_CRITERIA: Final[tuple[str, ...]] = (
    "eular_acr_2019", "age", "weight", "refractory", "stable_background_therapy",
    "sledai2k_screening", "pregnancy_contraception_female", "contraception_male",
    "informed_consent",
)
VISITS: Final[tuple[str, ...]] = (
    "D1", "D4", "D7", "D10", "D14", "D21", "D28", "D60", "D90", "D180", "D270", "D360",
)

# Reasons `trialflow screen-fail --reason` takes (stored as the event's `reason`): the failing
# inclusion criterion or exclusion, or why screening ended otherwise; free text goes in `note`.
SCREEN_FAILURE_OTHER_REASONS: Final[tuple[str, ...]] = (
    "screening_window_expired", "consent_withdrawn", "investigator_decision", "lost_to_follow_up",
    "other",
)
SCREEN_FAILURE_REASONS: Final[tuple[str, ...]] = (
    *INCLUSION_CRITERIA, *EXCLUSION_CHECKLIST, *SCREEN_FAILURE_OTHER_REASONS,
)

# Drug names the rules compare (after lower-casing and turning "_", "-" and runs of spaces into
# one space): abbreviations and brand names -> the generic name the rules use. The one place
# aliases are kept; docs/clinical-rules.md ("Drug names and aliases") lists them.
DRUG_ALIASES: Final[dict[str, str]] = {
    "mmf": "mycophenolate mofetil",
    "cellcept": "mycophenolate mofetil",
    "mpa": "mycophenolate",
    "mycophenolic acid": "mycophenolate",
    "mycophenolate sodium": "mycophenolate",
    "myfortic": "mycophenolate",
    "cyc": "cyclophosphamide",
    "ctx": "cyclophosphamide",
    "endoxan": "cyclophosphamide",
    "cytoxan": "cyclophosphamide",
    "hcq": "hydroxychloroquine",
    "plaquenil": "hydroxychloroquine",
    "rtx": "rituximab",
    "rituxan": "rituximab",
    "mabthera": "rituximab",
    "benlysta": "belimumab",
    "aza": "azathioprine",
    "mtx": "methotrexate",
    "tac": "tacrolimus",
    "pred": "prednisone",
    "mp": "methylprednisolone",
    "medrol": "methylprednisolone",
    "dex": "dexamethasone",
}
_DRUG_SEPARATORS: Final = re.compile(r"[\s_-]+")


def canonical_drug(name: object) -> str:
    """The generic name the rules compare: lower case, "_"/"-"/spaces as one space, an alias
    of DRUG_ALIASES replaced by its drug ("MMF" -> "mycophenolate mofetil"); "" for no name."""
    if not isinstance(name, str):
        return ""
    key = _DRUG_SEPARATORS.sub(" ", name.strip().lower())
    return DRUG_ALIASES.get(key, key)


# British and American spellings of codes and field names: both are accepted and stored as the
# canonical code above (which keeps whichever spelling it has: `hospitalisation`, `hematuria`).
# Each pair is (British fragment, American fragment); codes are compared by their American key.
SPELLING_VARIANTS: Final[tuple[tuple[str, str], ...]] = (
    ("isation", "ization"), ("ised", "ized"), ("ising", "izing"),
    ("haem", "hem"), ("anaem", "anem"), ("oedem", "edem"), ("oesoph", "esoph"),
    ("oestr", "estr"), ("leucop", "leukop"), ("leucocyt", "leukocyt"),
    ("titre", "titer"), ("tumour", "tumor"), ("colour", "color"), ("behaviour", "behavior"),
    ("favour", "favor"), ("labour", "labor"), ("centre", "center"), ("fibre", "fiber"),
)
_SPELLING_RE: Final = re.compile("|".join(british for british, _ in SPELLING_VARIANTS))
_AMERICAN: Final[dict[str, str]] = dict(SPELLING_VARIANTS)


def spelling_key(code: str) -> str:
    """`code` lower-cased in American spelling, so that `hospitalization` and `hospitalisation`
    (or `cerebral_oedema` and `cerebral_edema`) compare equal."""
    return _SPELLING_RE.sub(lambda match: _AMERICAN[match.group(0)], code.strip().lower())


def canonical_code(value: str, allowed: Iterable[str]) -> str | None:
    """The code of `allowed` that `value` names, in either spelling and any case; None if none."""
    wanted = spelling_key(value)
    return next((code for code in allowed if spelling_key(code) == wanted), None)
