"""export layer of SyDES Edge (see ../shared/DESIGN.md for layering)."""
