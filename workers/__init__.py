"""The workers role (see SPEC §2)."""
