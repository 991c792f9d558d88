"""Policies: which events to keep and what to enforce (in-kernel filtering lands here)."""
