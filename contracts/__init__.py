"""What the parts of Lineside agree on, importing none of them: the MQTT wire contract (``wire``), the
model manifest (``manifest``), the slice spec (``slice_spec``) and the ingress's broker logins
(``broker_logins``). Robots, edge nodes and the control plane all import from here; it imports only
pydantic and numpy.
"""
