"""The gateway role (see SPEC §2)."""
