"""Packaged SQL migrations (applied by ``greenlang-crypto db migrate``)."""
