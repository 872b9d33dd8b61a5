"""Graphs built from a run's spans and links (networkx): the information-dependency graph of agent steps."""
