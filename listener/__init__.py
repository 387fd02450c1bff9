"""The listener: one process per host that keeps the host's near cache fresh (SPEC §15)."""
