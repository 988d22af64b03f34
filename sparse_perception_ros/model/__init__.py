"""model room (see DESIGN)."""
