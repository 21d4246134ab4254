//! Timers: the once-a-second sweep that closes idle connections, frames that take too long to
//! arrive (slowloris), TLS handshakes that never finish, and connections whose session a newer login took. Time comes from the
//! core's injected clock.

use proto::codes::notice;
use proto::Status;

use super::Core;

impl Core<'_> {
    /// Once a second: closes idle connections and ones whose session was taken over by a newer
    /// login on another worker, and answers cluster messages the stream did not order in time.
    /// Returns the keys it marked closing or gave output.
    pub fn sweep(&mut self) -> Vec<usize> {
        let mut marked = self.expire_sends();
        for (key, conn) in self.conns.iter_mut() {
            if conn.st.closing {
                continue;
            }
            let slow_frame = conn
                .st
                .partial_since_ms
                .is_some_and(|t| self.ctx.now_ms.saturating_sub(t) > self.ctx.cfg.frame_timeout_ms);
            let tls_overdue = conn.tls.as_ref().is_some_and(|t| {
                t.handshake_overdue(self.ctx.now_ms, self.ctx.cfg.tls_handshake_timeout_ms)
            });
            if tls_overdue {
                // A handshake that never finishes: nothing can be said to the peer in the clear.
                self.ctx.metrics.tls_handshake_timeouts.add(1);
                conn.st.closing = true;
                conn.st.abort = true;
                marked.push(key);
            } else if slow_frame {
                // Slowloris: bytes keep coming, a frame never completes.
                self.ctx.metrics.idle_timeouts.add(1);
                self.ctx.error(
                    &mut conn.st,
                    0,
                    0,
                    Status::ErrTimeout,
                    "a frame took too long to arrive: closing",
                );
                conn.st.closing = true;
                marked.push(key);
            } else if self.ctx.now_ms.saturating_sub(conn.st.last_active_ms)
                > self.ctx.cfg.idle_timeout_ms
            {
                self.ctx.metrics.idle_timeouts.add(1);
                self.ctx
                    .notice(&mut conn.st, notice::IDLE_TIMEOUT, "idle timeout: closing");
                conn.st.closing = true;
                marked.push(key);
            } else if self.ctx.superseded(&conn.st) {
                self.ctx.kick_superseded(&mut conn.st);
                marked.push(key);
            }
        }
        marked
    }
}
