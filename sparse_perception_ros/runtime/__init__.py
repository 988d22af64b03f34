"""runtime room (see DESIGN)."""
