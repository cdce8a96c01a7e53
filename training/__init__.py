"""training layer of SyDES Edge (see docs/architecture.md for the layers and who owns each contract)."""
