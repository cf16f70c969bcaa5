"""Shared code for the media functions: one module per job (see README, "Code map")."""
