//! The epoll backend: readiness instead of completions, under the same event loop
//! ([`crate::event_loop`]). Used where io_uring is unavailable, and as the baseline io_uring is
//! measured against. Level-triggered: a socket is read until EAGAIN into one 64 KiB buffer and
//! written until EAGAIN, then watched for EPOLLOUT.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use crate::core::Core;
use crate::event_loop::Backend;
use crate::sockets::ByKey;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};

const LISTENER: u64 = u64::MAX;
const WAKE: u64 = u64::MAX - 1;
const READ_BUF: usize = 64 << 10;

/// A connection's socket and what epoll watches on it.
#[derive(Debug)]
struct Socket {
    fd: OwnedFd,
    /// What a write left unsent when the socket filled up (`buf[off..]`), sent first once
    /// EPOLLOUT says there is room; while it is here, EPOLLOUT is watched.
    rest: Option<(Vec<u8>, usize)>,
    /// EPOLLIN is wanted (until the connection closes).
    reading: bool,
    /// What the epoll set holds for it now.
    registered: EpollFlags,
}

/// The epoll backend of one worker.
#[derive(Debug)]
pub struct EpollBackend<'w> {
    epoll: Epoll,
    listener: Option<OwnedFd>,
    wake_fd: Option<BorrowedFd<'w>>,
    sockets: ByKey<Socket>,
    events: Vec<EpollEvent>,
    buf: Vec<u8>,
}

impl<'w> EpollBackend<'w> {
    /// Watches `listener` and, when given, the worker's chat wake-up eventfd.
    pub fn new(listener: OwnedFd, wake_fd: Option<BorrowedFd<'w>>) -> anyhow::Result<Self> {
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?;
        epoll.add(
            listener.as_fd(),
            EpollEvent::new(EpollFlags::EPOLLIN, LISTENER),
        )?;
        if let Some(fd) = wake_fd {
            epoll.add(fd, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))?;
        }
        Ok(EpollBackend {
            epoll,
            listener: Some(listener),
            wake_fd,
            sockets: ByKey::default(),
            events: vec![EpollEvent::empty(); 1024],
            buf: vec![0u8; READ_BUF],
        })
    }

    /// Brings the epoll set in line with what `key` wants (level-triggered: an EPOLLOUT left
    /// registered with nothing to write would fire forever).
    fn watch(&mut self, key: usize) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        let mut flags = EpollFlags::empty();
        if s.reading {
            flags |= EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
        }
        if s.rest.is_some() {
            flags |= EpollFlags::EPOLLOUT;
        }
        if flags != s.registered {
            s.registered = flags;
            let mut ev = EpollEvent::new(flags, key as u64);
            let _ = self.epoll.modify(s.fd.as_fd(), &mut ev);
        }
    }

    fn accept_all(&mut self, core: &mut Core<'_>) {
        let Some(l) = self.listener.as_ref() else {
            return;
        };
        loop {
            let raw = match nix::sys::socket::accept4(
                l.as_raw_fd(),
                nix::sys::socket::SockFlag::SOCK_NONBLOCK
                    | nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(raw) => raw,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "accept");
                    return;
                }
            };
            // SAFETY: accept4 returned a new fd nobody else owns.
            let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
            crate::net::tune_socket(&fd);
            match core.open() {
                Ok(key) => {
                    let flags = EpollFlags::EPOLLIN | EpollFlags::EPOLLRDHUP;
                    if self
                        .epoll
                        .add(fd.as_fd(), EpollEvent::new(flags, key as u64))
                        .is_err()
                    {
                        core.remove(key);
                        continue;
                    }
                    self.sockets.insert(
                        key,
                        Socket {
                            fd,
                            rest: None,
                            reading: true,
                            registered: flags,
                        },
                    );
                }
                // Best effort: the socket is new, so its buffer has room for one small frame.
                Err(refusal) => {
                    let _ = nix::unistd::write(&fd, &refusal);
                }
            }
        }
    }

    /// Writes `buf[off..]` until it is all out (its buffer then goes back to the core) or the
    /// socket is full (the rest is kept, and EPOLLOUT watched).
    fn write_out(&mut self, core: &mut Core<'_>, key: usize, buf: Vec<u8>, mut off: usize) {
        let Some(s) = self.sockets.get_mut(key) else {
            return;
        };
        let fd = s.fd.as_raw_fd();
        let metrics = core.metrics();
        while off < buf.len() {
            metrics.sends.add(1);
            match nix::sys::socket::send(fd, &buf[off..], nix::sys::socket::MsgFlags::MSG_NOSIGNAL)
            {
                Ok(n) => {
                    core.sent(key, n);
                    off += n;
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(_) => {
                    core.send_failed(key);
                    return;
                }
            }
        }
        if off < buf.len() {
            s.rest = Some((buf, off));
        } else {
            core.recycle(key, buf);
        }
        self.watch(key);
    }

    /// Reads everything available on `key` into the core.
    fn read_all(&mut self, core: &mut Core<'_>, key: usize) {
        loop {
            let Some(s) = self.sockets.get(key) else {
                return;
            };
            if !s.reading || core.step(key).map_or(true, |st| st.closing) {
                return;
            }
            match nix::unistd::read(s.fd.as_raw_fd(), &mut self.buf) {
                Ok(0) => return core.peer_closed(key),
                Ok(n) => {
                    core.on_bytes(key, &self.buf[..n]);
                    if n < self.buf.len() {
                        return;
                    }
                }
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => {}
                Err(_) => return core.peer_closed(key),
            }
        }
    }
}

impl Backend for EpollBackend<'_> {
    fn sending(&self, key: usize) -> bool {
        self.sockets.get(key).is_some_and(|s| s.rest.is_some())
    }

    fn in_flight(&self, key: usize) -> bool {
        // Readiness: no kernel operation outlives a call, but bytes a full socket left over
        // are still to be written.
        self.sending(key)
    }

    fn send(&mut self, core: &mut Core<'_>, key: usize) {
        if self.sending(key) {
            return;
        }
        if let Some(buf) = core.take_output(key) {
            self.write_out(core, key, buf, 0);
        }
    }

    fn stop_reading(&mut self, key: usize) {
        if let Some(s) = self.sockets.get_mut(key) {
            // Reading is over: a half-closed peer must not keep a level-triggered EPOLLIN
            // firing while the output flushes.
            s.reading = false;
        }
        self.watch(key);
    }

    fn reset(&mut self, key: usize) {
        if let Some(s) = self.sockets.get_mut(key) {
            crate::net::reset_on_close(&s.fd);
            // A reset drops what was not written.
            s.rest = None;
        }
    }

    fn close(&mut self, key: usize) {
        // Closing the fd removes it from the epoll set.
        self.sockets.remove(key);
    }

    fn stop_accepting(&mut self) {
        if let Some(l) = self.listener.take() {
            let _ = self.epoll.delete(l.as_fd());
        }
    }

    fn turn(&mut self, core: &mut Core<'_>, touched: &mut Vec<usize>) -> anyhow::Result<()> {
        let n = match self
            .epoll
            .wait(&mut self.events, EpollTimeout::from(1000u16))
        {
            Ok(n) => n,
            Err(Errno::EINTR) => 0,
            Err(e) => return Err(e.into()),
        };
        core.tick_clock();
        for i in 0..n {
            let ev = self.events[i];
            match ev.data() {
                WAKE => {
                    if let Some(fd) = self.wake_fd {
                        let mut b = [0u8; 8];
                        let _ = nix::unistd::read(fd.as_raw_fd(), &mut b);
                    }
                }
                LISTENER => self.accept_all(core),
                data => {
                    let key = data as usize;
                    let flags = ev.events();
                    if flags.contains(EpollFlags::EPOLLOUT) {
                        // Room again: the rest goes first (EPOLLOUT stays watched only if the
                        // socket fills up again); the loop's settle then sends what is new.
                        if let Some((buf, off)) =
                            self.sockets.get_mut(key).and_then(|s| s.rest.take())
                        {
                            self.write_out(core, key, buf, off);
                        }
                    }
                    if flags.intersects(
                        EpollFlags::EPOLLIN
                            | EpollFlags::EPOLLRDHUP
                            | EpollFlags::EPOLLHUP
                            | EpollFlags::EPOLLERR,
                    ) {
                        self.read_all(core, key);
                        if flags.intersects(EpollFlags::EPOLLHUP | EpollFlags::EPOLLERR) {
                            core.peer_closed(key);
                        }
                    }
                    touched.push(key);
                }
            }
        }
        Ok(())
    }

    fn finish(&mut self, _core: &mut Core<'_>) -> anyhow::Result<()> {
        Ok(())
    }
}
