"""Fault injection: injection points, the runtime that fires faults inside campaign runs, and the campaign runner."""
