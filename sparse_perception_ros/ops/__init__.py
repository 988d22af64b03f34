"""ops room (see DESIGN)."""
