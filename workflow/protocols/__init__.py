"""Protocol files shipped with trialflow, read with importlib.resources by workflow/protocol.py."""
