"""Short citations of the published sources, shown in explanations, `calc --list` and docs."""

from __future__ import annotations

from typing import Final

GLADMAN_2002: Final = "Gladman et al., J Rheumatol 2002;29:288-91"
GLADMAN_2000: Final = "Gladman et al., J Rheumatol 2000;27:377-9"
TOUMA_2010: Final = "Touma et al., Lupus 2010;19:49-51"
ARINGER_2019: Final = "Aringer et al., Ann Rheum Dis 2019;78:1151-9"
FRANKLYN_2016: Final = "Franklyn et al., Ann Rheum Dis 2016;75:1615-21"
DORIS_2021: Final = "van Vollenhoven et al., Ann Rheum Dis 2021;80:181-8"
KDIGO_2024: Final = "KDIGO 2024 lupus nephritis guideline, Kidney Int 2024;105(1S):S1-S69"
LEE_2019: Final = "Lee et al., ASTCT consensus grading, Biol Blood Marrow Transplant 2019;25:625-38"
CTCAE_5: Final = "NCI Common Terminology Criteria for Adverse Events v5.0 (2017)"
ICH_E2A: Final = "ICH E2A (1994), section II.B, serious adverse event"
STEROID_TABLE: Final = "prednisolone label equivalence table"
MOSTELLER_1987: Final = "Mosteller, N Engl J Med 1987;317:1098"
NCT06513429: Final = "registry record NCT06513429"
MACKENSEN_2022: Final = "Mackensen et al., Nat Med 2022;28:2124-32"
PROTOCOL_CALENDAR: Final = "IM19-SLE protocol calendar, docs/clinical-rules.md"
PROTOCOL_PERSISTENCE: Final = "IM19-SLE protocol, CAR-T persistence by qPCR, docs/clinical-rules.md"
