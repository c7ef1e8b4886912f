"""``python -m mlplatform_webapp``."""

raise SystemExit("mlplatform_webapp: not built yet")
