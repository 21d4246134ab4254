//! The socket helpers the master and both backends use: SO_REUSEPORT listeners, the steering
//! program that gives a connection to the worker on its CPU, per-connection options.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, sockopt, AddressFamily, SockFlag, SockType, SockaddrStorage};

/// Small frames want no Nagle delay.
pub fn tune_socket(fd: &OwnedFd) {
    let _ = socket::setsockopt(fd, sockopt::TcpNoDelay, &true);
}

/// Makes the coming close reset the connection (SO_LINGER 0): the kernel drops the unsent bytes
/// of a peer that was not reading instead of trying to deliver them.
pub fn reset_on_close(fd: &OwnedFd) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = socket::setsockopt(fd, sockopt::Linger, &linger);
}

/// A TCP socket bound to `addr` with SO_REUSEPORT; listening if `listen`.
pub fn reuseport_socket(addr: SocketAddr, listen: bool) -> anyhow::Result<OwnedFd> {
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let fd = socket::socket(
        family,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true)?;
    socket::setsockopt(&fd, sockopt::ReusePort, &true)?;
    socket::bind(fd.as_raw_fd(), &SockaddrStorage::from(addr))?;
    if listen {
        socket::listen(
            &fd,
            socket::Backlog::new(4096).unwrap_or(socket::Backlog::MAXCONN),
        )?;
    }
    Ok(fd)
}

/// Makes the kernel give each new connection to the listener at index `cpu % workers` of the
/// port's SO_REUSEPORT group, where `cpu` is the CPU that took the connection's SYN (a classic
/// BPF program, SO_ATTACH_REUSEPORT_CBPF, as nginx's `reuseport` and Seastar steer), instead of
/// a hash of its addresses. With more workers than CPUs only the first `CPUs` listeners get
/// connections and the rest sleep in the kernel (standbys that cost nothing), so `-w 8` on two
/// CPUs is `-w 2` rather than eight processes time-slicing the same two cores. An index past
/// the group's end (a worker being restarted) falls back to the hash. The program is the
/// group's: attaching it from every worker is idempotent.
pub fn steer_by_cpu(fd: &OwnedFd, workers: u16) -> std::io::Result<()> {
    const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const BPF_ALU_MOD_K: u16 = 0x94; // BPF_ALU | BPF_MOD | BPF_K
    const BPF_RET_A: u16 = 0x16; // BPF_RET | BPF_A
    const SKF_AD_CPU: u32 = (-0x1000i32 + 36) as u32; // SKF_AD_OFF + SKF_AD_CPU
    let mut code = [
        libc::sock_filter {
            code: BPF_LD_W_ABS,
            jt: 0,
            jf: 0,
            k: SKF_AD_CPU,
        },
        libc::sock_filter {
            code: BPF_ALU_MOD_K,
            jt: 0,
            jf: 0,
            k: u32::from(workers.max(1)),
        },
        libc::sock_filter {
            code: BPF_RET_A,
            jt: 0,
            jf: 0,
            k: 0,
        },
    ];
    let prog = libc::sock_fprog {
        len: code.len() as u16,
        filter: code.as_mut_ptr(),
    };
    // SAFETY: setsockopt reads `size_of::<sock_fprog>()` bytes from `prog`, and the kernel copies
    // the `len` instructions `prog.filter` points to before it returns; both live on this stack
    // frame for the whole call.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The port a bound socket got.
pub fn local_port(fd: &OwnedFd) -> anyhow::Result<u16> {
    let addr: SockaddrStorage = socket::getsockname(fd.as_raw_fd())?;
    addr.as_sockaddr_in()
        .map(|a| a.port())
        .or_else(|| addr.as_sockaddr_in6().map(|a| a.port()))
        .ok_or_else(|| anyhow::anyhow!("not an inet socket"))
}
