# Synced writes at queue depth 1, 2 and 4 (threads, each pwrite + O_DSYNC or fdatasync): syncs per
# second and per-sync latency for append, overwrite (zero-filled first) and write+fdatasync.
# Usage: python3 results/disk-qd.py [DIR on the disk to test]
import os, time, threading, sys
D=sys.argv[1] if len(sys.argv) > 1 else 'ns-disktest'; os.makedirs(D, exist_ok=True)
def run(mode, qd, size, n=2000):
    p=f'{D}/f-{mode}-{qd}'
    if os.path.exists(p): os.unlink(p)
    fd=os.open(p, os.O_RDWR|os.O_CREAT|(os.O_DSYNC if mode!='fdatasync' else 0), 0o600)
    total=n*size*qd+size
    if mode in('overwrite',):
        os.write(fd, b'\0'*total); os.fsync(fd)
    buf=b'x'*size
    off=[0]; lock=threading.Lock(); lat=[]
    def worker():
        for _ in range(n):
            with lock:
                o=off[0]; off[0]+=size
            t=time.perf_counter()
            os.pwrite(fd, buf, o)
            if mode=='fdatasync': os.fdatasync(fd)
            lat.append(time.perf_counter()-t)
    ts=[threading.Thread(target=worker) for _ in range(qd)]
    t0=time.perf_counter()
    for t in ts: t.start()
    for t in ts: t.join()
    el=time.perf_counter()-t0
    lat.sort()
    print(f'{mode:10} qd={qd} size={size}: {n*qd/el:8.0f} syncs/s  p50 {lat[len(lat)//2]*1e6:6.0f}us p99 {lat[int(len(lat)*.99)]*1e6:6.0f}us')
    os.close(fd); os.unlink(p)
for size in (4096, 65536):
  for mode in ('append','overwrite','fdatasync'):
    for qd in (1,2,4):
        run(mode,qd,size, n=1000)
