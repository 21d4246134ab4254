//! The epoll backend: the same [`Core`] driven by readiness instead of completions. Used where
//! io_uring is unavailable, and as the baseline io_uring is measured against.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

use crate::core::Core;
use crate::worker::Shutdown;

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const READ_BUF: usize = 64 << 10;

fn interest(want_write: bool) -> EpollFlags {
    let mut f = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
    if want_write {
        f |= EpollFlags::EPOLLOUT;
    }
    f
}

/// Reads everything available on `key` into the core; marks it closing on EOF or error.
fn read_all(core: &mut Core<'_>, key: usize, buf: &mut [u8]) {
    loop {
        let Some(conn) = core.conns.get_mut(key) else {
            return;
        };
        if conn.st.closing {
            return;
        }
        match nix::unistd::read(conn.fd.as_raw_fd(), buf) {
            Ok(0) => {
                conn.st.closing = true;
                return;
            }
            Ok(n) => {
                core.on_bytes(key, &buf[..n]);
                if n < buf.len() {
                    return;
                }
            }
            Err(Errno::EAGAIN) => return,
            Err(Errno::EINTR) => {}
            Err(_) => {
                conn.st.closing = true;
                return;
            }
        }
    }
}

/// Writes what `key` has queued; registers interest in writability if the socket is full;
/// closes it once closing and flushed.
fn settle(core: &mut Core<'_>, epoll: &Epoll, key: usize) {
    let Some(conn) = core.conns.get_mut(key) else {
        return;
    };
    if conn.st.abort {
        // A slow consumer: close without flushing, resetting the connection.
        crate::worker::reset_on_close(&conn.fd);
        core.remove(key);
        return;
    }
    while !conn.st.out.is_empty() {
        let chunk = conn.st.out.chunk();
        match nix::sys::socket::send(
            conn.fd.as_raw_fd(),
            chunk,
            nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
        ) {
            Ok(n) => conn.st.out.advance(n),
            Err(Errno::EAGAIN) => break,
            Err(Errno::EINTR) => {}
            Err(_) => {
                conn.st.out = Default::default();
                conn.st.closing = true;
            }
        }
    }
    let want_write = !conn.st.out.is_empty();
    if conn.st.closing && !want_write {
        // Closing the fd removes it from the epoll set.
        core.remove(key);
        return;
    }
    if conn.st.closing && !conn.io.shut {
        // Reading is over: wait only for room to write, so a half-closed peer does not keep
        // a level-triggered EPOLLIN firing.
        conn.io.shut = true;
        conn.io.send_busy = true;
        let mut ev = EpollEvent::new(EpollFlags::EPOLLOUT, key as u64);
        let _ = epoll.modify(conn.fd.as_fd(), &mut ev);
    } else if !conn.st.closing && want_write != conn.io.send_busy {
        conn.io.send_busy = want_write;
        let mut ev = EpollEvent::new(interest(want_write), key as u64);
        let _ = epoll.modify(conn.fd.as_fd(), &mut ev);
    }
}

/// Runs the worker's loop until shutdown completes.
pub fn run(
    core: &mut Core<'_>,
    listener: OwnedFd,
    shutdown: &Shutdown,
    wake_fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> anyhow::Result<()> {
    let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
    epoll.add(
        listener.as_fd(),
        EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
    )?;
    if let Some(fd) = wake_fd {
        epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
    }
    let mut listener = Some(listener);
    let mut events = vec![EpollEvent::empty(); 1024];
    let mut buf = vec![0u8; READ_BUF];
    let mut touched: Vec<usize> = Vec::new();
    let mut last_sweep = Instant::now();
    loop {
        if shutdown.requested() && !core.shutting_down() {
            if let Some(l) = listener.take() {
                let _ = epoll.delete(l.as_fd());
            }
            touched.extend(core.begin_shutdown(shutdown.grace));
        }
        for key in touched.drain(..) {
            settle(core, &epoll, key);
        }
        if core.drained() {
            break;
        }
        let n = match epoll.wait(&mut events, EpollTimeout::from(1000u16)) {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        core.tick_clock();
        for ev in &events[..n] {
            if ev.data() == WAKE {
                if let Some(fd) = wake_fd {
                    let mut b = [0u8; 8];
                    let _ = nix::unistd::read(fd.as_raw_fd(), &mut b);
                }
                continue;
            }
            if ev.data() == LISTENER {
                let Some(l) = listener.as_ref() else { continue };
                loop {
                    match nix::sys::socket::accept4(
                        l.as_raw_fd(),
                        nix::sys::socket::SockFlag::SOCK_NONBLOCK
                            | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                    ) {
                        Ok(raw) => {
                            // SAFETY: accept4 returned a new fd nobody else owns.
                            let fd =
                                unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                            crate::worker::tune_socket(&fd);
                            if let Some(key) = core.accept(fd) {
                                let conn = &core.conns[key];
                                if epoll
                                    .add(
                                        conn.fd.as_fd(),
                                        EpollEvent::new(interest(false), key as u64),
                                    )
                                    .is_err()
                                {
                                    core.remove(key);
                                }
                            }
                        }
                        Err(Errno::EAGAIN) => break,
                        Err(Errno::EINTR | Errno::ECONNABORTED) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "accept");
                            break;
                        }
                    }
                }
                continue;
            }
            let key = ev.data() as usize;
            let flags = ev.events();
            if flags.intersects(
                EpollFlags::EPOLLIN
                    | EpollFlags::EPOLLRDHUP
                    | EpollFlags::EPOLLHUP
                    | EpollFlags::EPOLLERR,
            ) {
                read_all(core, key, &mut buf);
                if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                    if let Some(c) = core.conns.get_mut(key) {
                        c.st.closing = true;
                    }
                }
            }
            touched.push(key);
        }
        touched.extend(core.deliver());
        if last_sweep.elapsed() >= Duration::from_secs(1) {
            last_sweep = Instant::now();
            touched.extend(core.sweep());
        }
    }
    core.close_all();
    Ok(())
}
