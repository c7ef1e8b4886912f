"""``python -m mlplatform_reporter``."""

raise SystemExit("mlplatform_reporter: not built yet")
