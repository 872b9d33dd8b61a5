"""Capture: runs inside user processes; imports nothing from store, graph or analysis."""
