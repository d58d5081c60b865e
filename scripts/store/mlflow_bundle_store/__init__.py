"""MLflow plugins of the bundle: the `bundle-postgresql://` tracking store and the `bundle-auth` app."""
