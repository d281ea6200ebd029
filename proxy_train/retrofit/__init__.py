"""The retrofit recall proxy: every candidate starts from one trained attention teacher (issue 31)."""
