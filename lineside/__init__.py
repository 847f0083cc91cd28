"""The ``lineside`` command (``lineside.cli``) and the demo that runs the whole product on one machine."""
