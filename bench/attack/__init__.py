"""``python -m bench attack``: goodput and server CPU while an attacker
replays, forges and floods handshakes.

:mod:`bench.attack.runner` builds the lab and runs the phases,
:mod:`bench.attack.flood` is the attacker (run as ``python -m
bench.attack.flood`` in its own namespace), :mod:`bench.attack.report`
writes the results; :mod:`bench.attack.records` is the phase record both
sides share.
"""
