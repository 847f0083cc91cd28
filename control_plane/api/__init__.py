"""HTTP API of the control plane: one router per resource in ``routes/``."""
