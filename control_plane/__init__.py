"""Lineside control plane: tenants, robots, capacity, billing and the dashboard.

Its service, models and routes arrive with the control-plane issue; for now
the package exists so the project layout matches ../shared/ARCHITECTURE.md.
"""
