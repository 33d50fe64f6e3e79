"""Experiment runners built on the simulator (ablations, sweeps)."""
