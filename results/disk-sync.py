# What one synced write costs on this disk: append (RWF_DSYNC past the end), overwrite (RWF_DSYNC over
# zero-filled, synced blocks) and write+fdatasync, 3000 in a row at QD 1; latency, and the busy CPU time of
# the whole machine per sync (/proc/stat). Usage: python3 results/disk-sync.py [DIR on the disk to test]
import os, time
import sys
D=sys.argv[1] if len(sys.argv) > 1 else 'ns-disktest'; os.makedirs(D, exist_ok=True)
def busy():
    with open('/proc/stat') as f: v=list(map(int,f.readline().split()[1:]))
    return (sum(v)-v[3]-v[4])/os.sysconf('SC_CLK_TCK')
def run(mode,size,n=3000):
    p=f'{D}/c-{mode}'
    if os.path.exists(p): os.unlink(p)
    flags=os.O_RDWR|os.O_CREAT
    fd=os.open(p, flags,0o600)
    if mode=='overwrite':
        os.write(fd,b'\0'*(n*size+size)); os.fsync(fd)
    buf=b'x'*size
    b0=busy(); t0=time.perf_counter()
    for i in range(n):
        os.pwritev(fd,[buf],i*size,os.RWF_DSYNC) if mode!='fdatasync' else (os.pwrite(fd,buf,i*size),os.fdatasync(fd))
    el=time.perf_counter()-t0; b=busy()-b0
    print(f'{mode:10} {size:6}: {el/n*1e6:6.0f} us/sync, cpu {b/n*1e6:6.1f} us/sync (all cpus)')
    os.close(fd); os.unlink(p)
for s in (4096,65536):
    for m in ('append','overwrite','fdatasync'): run(m,s)
