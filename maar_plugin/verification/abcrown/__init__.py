"""α,β-CROWN as a verification back end, and the reader of its YAML configs."""
