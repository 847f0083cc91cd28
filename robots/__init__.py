"""What runs on an inspection robot: the MQTT SDK (``sdk``) and the fleet simulator (``simulate``).

The SDK needs only paho-mqtt, pydantic and ``contracts`` (``pip install lineside[robot]``); the
simulator also renders part images (numpy, Pillow).
"""
