"""data room (see DESIGN)."""
