"""``python -m bench clients``: many simulated clients against one real server.

- `sim`: one simulated client (stripe's own sans-I/O `Endpoint`: real Noise
  handshakes, AEAD, probes and feedback; no TUN: it makes its inner packets
  itself) and an in-memory harness for the fake-clock tests;
- `worker`: a process driving a share of the clients over real UDP sockets,
  each link bound to its own source address;
- `sink`: counts what reaches the server's inner address, per client;
- `run`: the lab (namespaces, addresses, the server's generated config),
  the phases, the measurements, results.md/json and the plot;
- `report`: Jain's index, the tables and the plot.
"""
