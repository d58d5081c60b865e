"""Operator tools of the MLflow deployment bundle (`./mlflowctl --help`)."""
