"""train room (see DESIGN)."""
