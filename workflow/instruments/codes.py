"""Canonical codes of docs/clinical-rules.md, shared by instruments, forms and exports.

Every other module takes its code lists from here, so a code is spelled in one place.
"""

from __future__ import annotations

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
