"""The actors of the screener; each module runs one kind, wired by `screener.app`."""
