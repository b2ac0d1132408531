"""`cft compose`: bundles trained separately become one bundle predicting all of their tasks."""
