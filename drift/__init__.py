"""The drift role (see SPEC §2)."""
