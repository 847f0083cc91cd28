"""Training, calibration and held-out evaluation of the bundled model (``make train``, ``make evaluate``).

Evaluation judges frames through the edge runtime (``edge_node.runtime``) exactly as a slice does.
"""
