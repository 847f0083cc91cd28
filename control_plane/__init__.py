"""Lineside control plane: tenants, roles, sites and nodes, robots with broker credentials,
the model registry and desired slices, served by FastAPI over SQLModel.

``lineside control-plane`` runs it (``control_plane.app.create_app``); edge agents
(``edge_node.agent``) pull each site's desired state from it.
"""
