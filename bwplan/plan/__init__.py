"""The planner: from a Net to a Plan of explained backward decisions."""
