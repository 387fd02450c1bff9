"""The broker role (see SPEC §2)."""
