"""Event type names (past tense). `events/` stores them as opaque strings."""

from __future__ import annotations

from typing import Final

# stream `study`
STUDY_INITIALISED: Final = "StudyInitialised"
SITE_ADDED: Final = "SiteAdded"
USER_ADDED: Final = "UserAdded"
USER_DEACTIVATED: Final = "UserDeactivated"
PROTOCOL_LOADED: Final = "ProtocolLoaded"
PROTOCOL_AMENDED: Final = "ProtocolAmended"
ENROLMENT_PLACE_TAKEN: Final = "EnrolmentPlaceTaken"
ENROLMENT_PLACE_FREED: Final = "EnrolmentPlaceFreed"

# a subject's stream
SUBJECT_CONSENTED: Final = "SubjectConsented"
SUBJECT_RECONSENTED: Final = "SubjectReconsented"
FORM_RECORDED: Final = "FormRecorded"
FORM_CORRECTED: Final = "FormCorrected"
ELIGIBILITY_CONFIRMED: Final = "EligibilityConfirmed"
SCREEN_FAILED: Final = "ScreenFailed"
LEUKAPHERESIS_RECORDED: Final = "LeukapheresisRecorded"
PRODUCT_RELEASED: Final = "ProductReleased"
PRODUCT_RELEASE_FAILED: Final = "ProductReleaseFailed"
LYMPHODEPLETION_GIVEN: Final = "LymphodepletionGiven"
INFUSION_GIVEN: Final = "InfusionGiven"
VISIT_RECORDED: Final = "VisitRecorded"
SUBJECT_COMPLETED: Final = "SubjectCompleted"
SUBJECT_OFF_STUDY: Final = "SubjectWentOffStudy"
PHASE_CHANGED: Final = "PhaseChanged"
