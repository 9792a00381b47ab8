"""Lowering: from a Plan to a Program, the static schedule a runtime executes."""
