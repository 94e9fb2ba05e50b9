import json,sys,glob
recs=[json.loads(l) for l in open('/tmp/h8/st.jsonl')]
ss=[json.loads(l) for l in open('/tmp/h8/ss.jsonl')]
cl=[r for r in recs if r['role']=='client' and r.get('links')]
runs=[];cur=[]
for r in cl:
    tx=sum(l['tx_bytes'] or 0 for l in r['links'])
    if cur and (r['t']-cur[-1]['t']>3 or tx < sum(l['tx_bytes'] or 0 for l in cur[-1]['links'])): runs.append(cur);cur=[]
    cur.append(r)
if cur: runs.append(cur)
print('runs', len(runs), [round(x[0]['t'],1) for x in runs])
which=int(sys.argv[1]); lo=float(sys.argv[2]); hi=float(sys.argv[3])
run=runs[which]; t0=run[0]['t']
srv=[r for r in recs if r['role']=='server' and r.get('links') and t0-1<=r['t']<=run[-1]['t']+1]
def near(lst,t):
    return min(lst,key=lambda r:abs(r['t']-t)) if lst else None
t=t0+lo
while t<t0+hi:
    c=near(run,t); s=near(srv,t); x=near([q for q in ss if abs(q['t']-t)<0.5],t)
    line=f"{t-t0:5.1f} cq={c['queued']:3} "
    for l in c['links']: line+=f"C{l['state'][:2]} cw{l['cwnd_bytes']//1500}/in{l['inflight_bytes']//1500} rtt{l['rtt_ms']} | "
    line+=f"sq={s['queued'] if s else '-'} "
    if s:
        for l in s['links']: line+=f"S{l['state'][:2]} cw{l['cwnd_bytes']//1500}/in{l['inflight_bytes']//1500} | "
        line+=f"held={s['reorder'].get('held')} "
    if x: line+=f"tcp cwnd={x.get('cwnd')} un={x.get('unacked')} rto={x.get('rto')} bo={x.get('backoff')} st={x.get('ca_state')} retr={x.get('bytes_retrans')}"
    print(line); t+=0.5
