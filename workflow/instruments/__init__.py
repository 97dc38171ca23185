"""Clinical instruments: pure, typed functions with no I/O (issue 3)."""
