"""Exact references and seeded problems for testing verifiers; the verifier itself never uses them."""
