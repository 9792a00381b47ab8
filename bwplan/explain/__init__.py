"""Renderers: pure functions from a Plan to text (table, JSON, Graphviz dot, --why)."""
