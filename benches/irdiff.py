#!/usr/bin/env python3
"""Per-function difference of two callgrind runs (self cost, instructions per request), largest first.

Usage: benches/irdiff.py A.callgrind B.callgrind [REQUESTS=2000] [ROWS=40]
The files are what benches/instructions.sh leaves in $IR_OUT (one per target); B minus A per function.
"""
import subprocess,sys,re
def load(f):
    out=subprocess.run(["callgrind_annotate","--threshold=100","--inclusive=no",f],capture_output=True,text=True).stdout
    d={}
    for line in out.splitlines():
        m=re.match(r"\s*([\d,]+) \([^)]*\)\s+(.*?)(?: \[[^\]]*\])?$",line)
        if m:
            name=m.group(2)
            name=re.sub(r"^\?\?\?:","",name)
            d[name]=d.get(name,0)+int(m.group(1).replace(",",""))
    return d
a=load(sys.argv[1]); b=load(sys.argv[2]); n=int(sys.argv[3]) if len(sys.argv)>3 else 2000
rows=[(b.get(k,0)-a.get(k,0),k) for k in set(a)|set(b)]
rows.sort(key=lambda r:-abs(r[0]))
for dlt,k in rows[:int(sys.argv[4]) if len(sys.argv)>4 else 40]:
    print(f"{dlt/n:+9.0f}  {a.get(k,0)/n:8.0f} {b.get(k,0)/n:8.0f}  {k[:150]}")
