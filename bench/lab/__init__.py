"""The lab: client and server namespaces joined by shaped, possibly impaired
links, and the processes and traffic that run in them.

Everything outside this package (the systems, the runner, the attack bench,
``tests/integration``) takes the lab from here; the modules behind it:

* :mod:`bench.lab.spec`: what a lab is made of (link specs, names,
  addresses); :mod:`bench.lab.topology`: :class:`Lab`, building, operating
  and tearing down its namespaces and links, with the ``tbf``/``netem``/
  nftables settings of :mod:`bench.lab.shaping` and the namespace
  housekeeping of :mod:`bench.lab.netns`;
* :mod:`bench.lab.emulator`: the userspace link emulator (delay, jitter,
  loss, and real links' bottlenecks: :mod:`bench.lab.linkmodel`), run as
  ``python -m bench.lab.emulator`` in the middle namespace; the traces it
  replays come from :mod:`bench.lab.traces` (recorded files, or synthetic
  stand-ins from :mod:`bench.lab.synthetic`);
* :mod:`bench.lab.procs` and :mod:`bench.lab.sh`: background processes
  stopped by PID, commands run to completion, the tools they need;
* :mod:`bench.lab.iperf` and :mod:`bench.lab.udp_drops`: the traffic and
  where a UDP test's loss happened.
"""

from bench.lab.iperf import Flow, client_command, run_client, start_server
from bench.lab.netns import cleanup_prefix, delete_namespace, list_namespaces
from bench.lab.procs import Proc, last_json_line, terminating_signals_raise, uninterruptible
from bench.lab.sh import CommandError, ensure_tools, in_ns, run
from bench.lab.shaping import netem_args, nft_loss_ruleset, tbf_args
from bench.lab.spec import (
    ECMP_CLIENT_ADDR,
    ECMP_SERVER_ADDR,
    MAX_LINKS,
    Direction,
    LabNames,
    LinkNames,
    LinkSpec,
    new_prefix,
)
from bench.lab.topology import Counters, Lab, mptcp_available

__all__ = [
    "ECMP_CLIENT_ADDR",
    "ECMP_SERVER_ADDR",
    "MAX_LINKS",
    "CommandError",
    "Counters",
    "Direction",
    "Flow",
    "Lab",
    "LabNames",
    "LinkNames",
    "LinkSpec",
    "Proc",
    "cleanup_prefix",
    "client_command",
    "delete_namespace",
    "ensure_tools",
    "in_ns",
    "last_json_line",
    "list_namespaces",
    "mptcp_available",
    "netem_args",
    "new_prefix",
    "nft_loss_ruleset",
    "run",
    "run_client",
    "start_server",
    "tbf_args",
    "terminating_signals_raise",
    "uninterruptible",
]
