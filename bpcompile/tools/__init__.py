"""The tools over a compiled spec: ``inspect`` (the adjoint program), ``draw`` (the graph picture), ``verify`` (against SymPy and finite differences)."""
