"""Each message type to its one decision (a plain dict, as cosmicpython routes commands)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from events.streams import is_subject_id
from workflow.commands import (
    admin,
    copies,
    exports,
    lifecycle,
    mend,
    reminders,
    review,
    signatures,
)
from workflow.commands import messages as M
from workflow.commands.decision import Context, Decision, check_phase_order, preview
from workflow.commands.roles import admit
from workflow.errors import RuleViolation

Decide = Callable[[Any, Context], Decision]

DECISIONS: Final[dict[type[M.Message], Decide]] = {
    M.InitialiseStudy: admin.initialise,
    M.AddSite: admin.add_site,
    M.AddUser: admin.add_user,
    M.DeactivateUser: admin.deactivate_user,
    M.ChangePassword: admin.change_password,
    M.UnlockAccount: admin.unlock_account,
    M.SetLockoutPolicy: admin.set_lockout_policy,
    M.SetAmendmentReview: admin.set_amendment_review,
    M.LoadProtocol: admin.load_protocol,
    M.AmendProtocol: admin.amend_protocol,
    M.ConsentSubject: lifecycle.consent,
    M.ReconsentSubject: lifecycle.reconsent,
    M.RecordForm: lifecycle.record_form,
    M.CorrectRecord: mend.correct_record,
    M.VoidRecord: mend.void_record,
    M.ConfirmEligibility: lifecycle.confirm_eligibility,
    M.RecordScreenFailure: lifecycle.screen_fail,
    M.RecordLeukapheresis: lifecycle.leukapheresis,
    M.ReleaseProduct: lifecycle.release,
    M.GiveLymphodepletion: lifecycle.lymphodepletion,
    M.Infuse: lifecycle.infuse,
    M.RecordVisit: lifecycle.record_visit,
    M.CompleteStudy: lifecycle.complete,
    M.TakeOffStudy: lifecycle.off_study,
    M.OpenQuery: review.open_query,
    M.AnswerQuery: review.answer_query,
    M.CloseQuery: review.close_query,
    M.VerifySource: review.verify_source,
    M.LockStudy: review.lock_study,
    M.UnlockStudy: review.unlock_study,
    M.Sign: signatures.sign,
    M.RecordExport: exports.record_export,
    M.IssueReminder: reminders.issue,
    M.CancelReminder: reminders.cancel,
    M.RecordDelivery: reminders.delivered,
    M.RecordDeliveryFailure: reminders.delivery_failed,
    M.CopySubjects: copies.copy_subjects,
}


def decide(message: M.Message, context: Context, *, method: str = "password") -> Decision:
    """Admit `message` (workflow/commands/roles.py), decide it against `context`, and refuse
    any write to a subject while the study is locked: events to append, or a refusal raised.
    Pure: this is what the executor runs between loading and appending."""
    admit(message, context.study, context.actor, context.subject, method)
    decision = DECISIONS[type(message)](message, context)
    _check_phase_order(context, decision)
    written = [w.stream for w in decision.writes if w.events and is_subject_id(w.stream)]
    if context.study.locked and written:
        raise RuleViolation(f"The study is locked, so subject {written[0]} may not be written "
                            "until an admin runs `trialflow study unlock`.", rule="study_locked",
                            subject=written[0])
    return decision


def _check_phase_order(context: Context, decision: Decision) -> None:
    """The one net under every decision on a consented subject: with its events folded in,
    the subject's clinical dates must keep the phase order they kept before it (each command
    names its own nearer rule first; this makes the order hold whatever the command)."""
    state = context.subject
    if state is None or not state.consented:
        return
    own = [event for write in decision.writes if write.stream == state.subject
           for event in write.events]
    if own:
        check_phase_order(context, preview(context, own), "date")
