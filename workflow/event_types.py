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
STUDY_LOCKED: Final = "StudyLocked"  # every subject write refused until StudyUnlocked
STUDY_UNLOCKED: Final = "StudyUnlocked"
EXPORT_RECORDED: Final = "ExportRecorded"  # never part of an export

# a subject's stream
SUBJECT_CONSENTED: Final = "SubjectConsented"
SUBJECT_RECONSENTED: Final = "SubjectReconsented"
FORM_RECORDED: Final = "FormRecorded"
FORM_CORRECTED: Final = "FormCorrected"  # any record: a form or a procedure
RECORD_VOIDED: Final = "RecordVoided"  # entered in error: {target_position, form}, reason
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
# a subject's stream: data review by monitors (workflow/monitoring.py)
QUERY_OPENED: Final = "QueryOpened"
QUERY_ANSWERED: Final = "QueryAnswered"
QUERY_CLOSED: Final = "QueryClosed"
SOURCE_VERIFIED: Final = "SourceVerified"

# stream `reminders-SUBJECT` (the scheduler's; never written by coordinators)
REMINDER_ISSUED: Final = "ReminderIssued"
REMINDER_CANCELLED: Final = "ReminderCancelled"
REMINDER_DELIVERED: Final = "ReminderDelivered"
REMINDER_DELIVERY_FAILED: Final = "ReminderDeliveryFailed"

# identity and signatures (21 CFR Part 11), study stream; never a hash
CREDENTIALS_CHANGED: Final = "CredentialsChanged"  # {name, by, temporary}
AUTHENTICATION_FAILED: Final = "AuthenticationFailed"  # {name, method, reason, login}
ACCOUNT_LOCKED: Final = "AccountLocked"  # {name, failed_attempts, until (admins) or null}
ACCOUNT_UNLOCKED: Final = "AccountUnlocked"  # {name, lapsed}, reason
FAILED_ATTEMPTS_RESET: Final = "FailedAttemptsReset"  # {name, failed_attempts}: then signed in
LOCKOUT_POLICY_SET: Final = "LockoutPolicySet"  # {max_failed_attempts}
AMENDMENT_REVIEW_SET: Final = "AmendmentReviewSet"  # {required}: amend needs --reviewed
SIGNATURE_RECORDED: Final = "SignatureRecorded"  # subject stream, bound to an event's hash
