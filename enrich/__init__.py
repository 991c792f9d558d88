"""Enrichment: who did it. The process cache and its sources."""

from enrich import procfs
from enrich.process_cache import CacheStats, ProcessCache
from enrich.users import UserNames

__all__ = ["CacheStats", "ProcessCache", "UserNames", "procfs"]
