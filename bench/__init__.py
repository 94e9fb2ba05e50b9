"""stripe's benchmark and demo harness.

Builds network-namespace labs (client, server, N shaped links, optionally a
middle namespace running a userspace link emulator), runs iperf3 across plain
links, ECMP, kernel MPTCP and the stripe tunnel, and reports the results.
Entry point: ``python -m bench``.
"""
