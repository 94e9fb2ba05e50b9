import sys
from tests.core.netsim import Sim, SimLink, Trace
from tests.core.test_real_links import offered, stepped
import stripe.window as window

window.RESTART_CWND_BYTES = int(sys.argv[1]) * 1500
back_mbit = float(sys.argv[2])
slow = stepped([(4.0, 6.0), (60.0, back_mbit)], queue_bytes=300_000)
links = [SimLink(delay_s=0.030, traces={"up": Trace.constant(8e6)}),
         SimLink(delay_s=0.030, traces={"up": slow})]
sim = Sim(links, scheduler="adaptive", start=1000.0)
slow.start_s = links[0].traces["up"].start_s = sim.now
sim.run(0.5)
t0 = sim.now
sim.run(2.0, offered(sim.now, 40e6, 2.0))
links[1].up = False
sim.run(2.0, offered(sim.now, 40e6, 2.0, first=10**6))
links[1].up = True
n = 2 * 10**6
client = sim.client.peers[0]
server = sim.server.peers[0]
maxq = 0.0
row = []
prev = [l.counters.rx_bytes for l in server.links.values()]
for i in range(30):
    sim.run(0.1, offered(sim.now, 40e6, 0.1, first=n))
    n += 10**5
    maxq = max(maxq, slow.backlog(sim.now) * 8 / (back_mbit * 1e6))
    cur = [l.counters.rx_bytes for l in server.links.values()]
    l1 = client.links[1]; row.append("%.1f(c%d,i%d,r%.1f,%s)" % ((cur[1] - prev[1]) * 8 / 0.1 / 1e6, l1.window.cwnd_bytes/1500, l1.window.inflight_bytes/1500, l1.est.rate_bps/1e6, "s" if l1.window.slow_start else ""))
    prev = cur
st = server.current.reorder.stats
print(f"restart={sys.argv[1]} back={back_mbit}: link1 Mbit/s per 100ms:", " ".join(row))
print(f"  max queue {maxq*1000:.0f} ms, late {st.late}, lost {st.lost}, delivered {st.delivered}")
