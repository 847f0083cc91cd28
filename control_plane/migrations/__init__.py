"""Alembic migrations of the control-plane schema; ``control_plane.db.migrate`` applies them."""
