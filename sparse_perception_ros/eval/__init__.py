"""eval room (see DESIGN)."""
