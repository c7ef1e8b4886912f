"""``python -m mlplatform_serving``."""

raise SystemExit("mlplatform_serving: not built yet")
