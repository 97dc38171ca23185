"""The clinical workflow. Importing any part of it first registers the schema versions and
upcasters of its event types (workflow/upcasters.py), so no payload of theirs is read in an
old shape."""

from workflow import upcasters as _upcasters  # noqa: F401
