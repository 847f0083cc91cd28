"""Bridges from the answers Lineside publishes on MQTT to the protocols plant equipment speaks (OPC UA)."""
