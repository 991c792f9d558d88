"""Enrichment: who did it. The process cache and its sources; containers, pods, users."""

from enrich import procfs
from enrich.cgroups import CgroupInfo, CgroupResolver, cgroup2_mount, parse_path
from enrich.containers import Enricher, Enrichment
from enrich.kube import PodMeta, PodWatcher
from enrich.process_cache import CacheStats, ProcessCache
from enrich.redact import RedactError, Redactor, RedactRule, redactor
from enrich.users import UserNames

__all__ = [
    "CacheStats",
    "CgroupInfo",
    "CgroupResolver",
    "Enricher",
    "Enrichment",
    "PodMeta",
    "PodWatcher",
    "ProcessCache",
    "RedactError",
    "RedactRule",
    "Redactor",
    "UserNames",
    "cgroup2_mount",
    "parse_path",
    "procfs",
    "redactor",
]
