"""Policies: which file and network events to keep, and what to enforce, in the kernel."""

from policy.compile import Compiled, compile_policies
from policy.kernel import PolicyMaps, RuleCount
from policy.model import Action, Kind, Policy, PolicySet, Rule
from policy.parse import PolicyError, parse_documents, parse_files, parse_text, read_documents
from policy.store import PolicyStore
from policy.watch import Fingerprint, fingerprint
from policy.workload_map import WorkloadMap

__all__ = [
    "Action",
    "Compiled",
    "Fingerprint",
    "Kind",
    "Policy",
    "PolicyError",
    "PolicyMaps",
    "PolicySet",
    "PolicyStore",
    "Rule",
    "RuleCount",
    "WorkloadMap",
    "compile_policies",
    "fingerprint",
    "parse_documents",
    "parse_files",
    "parse_text",
    "read_documents",
]
