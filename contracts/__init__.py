"""What the parts of Lineside agree on, importing none of them: the MQTT wire contract (``wire``), the
model manifest (``manifest``), the slice spec (``slice_spec``), the edge agent's HTTP API
(``agent_api``) and the ingress's broker logins (``broker_logins``). Robots, edge nodes and the control
plane all import from here. Every module needs only pydantic, except ``manifest`` (numpy): this file
imports none of them, so a robot's ``from contracts import wire`` stays within the robot extra.
"""
