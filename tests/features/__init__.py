"""Rows of the request-feature matrix (tests/test_request_features.py)."""
