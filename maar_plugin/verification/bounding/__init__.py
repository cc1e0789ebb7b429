"""The bound passes: auto_LiRPA's IBP/CROWN/alpha-CROWN, our batched split-aware CROWN pass, and sound LPs."""
