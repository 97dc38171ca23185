"""The write side: command messages (messages.py), their pure decisions (lifecycle.py,
admin.py, review.py, signatures.py, exports.py, reminders.py, copies.py; routed in
handlers.py), who may send which (roles.py) and the one executor that authenticates,
authorises, decides and appends (executor.py). docs/architecture.md walks one command through."""
