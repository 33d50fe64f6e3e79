"""Workloads: where requests come from (generators, named datasets, trace files)."""
from streamserve.workload.base import Workload

__all__ = ["Workload"]
