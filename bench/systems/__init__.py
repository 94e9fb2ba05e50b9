"""The systems compared: plain links, ECMP, kernel MPTCP, wireguard-go, and stripe.

Each system is started on a built lab and says where iperf3 must send
(:class:`Target`: address, source address, a wrapper such as ``mptcpize
run``). One module per family: :mod:`bench.systems.kernel` (plain links,
ECMP, MPTCP: the kernel's own ways), :mod:`bench.systems.wireguard_go` and
:mod:`bench.systems.stripe` (tunnels, a server and a client process each,
on :mod:`bench.systems.tunnel`); :mod:`bench.systems.base` holds what they
share.
"""

from bench.systems.base import System, Target
from bench.systems.kernel import Ecmp, Mptcp, PlainLink
from bench.systems.stripe import Stripe
from bench.systems.tunnel import TunnelSystem
from bench.systems.wireguard_go import WireguardGo

__all__ = [
    "Ecmp",
    "Mptcp",
    "PlainLink",
    "Stripe",
    "System",
    "Target",
    "TunnelSystem",
    "WireguardGo",
]
