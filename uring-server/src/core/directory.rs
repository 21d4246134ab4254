//! Who is here: LIST_USERS, USER_NAMES, and DIRECT_SEND to one user through the inbox ring of the worker
//! that serves them.

use proto::body::*;
use proto::codec::{List, Name};
use proto::{Response, Status};

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx};

/// Entries for a list of (id, name), leaving out a name that is not a valid one on the wire.
fn user_entries(names: &[(u32, String)]) -> Vec<UserEntry<'_>> {
    names
        .iter()
        .filter_map(|(id, n)| {
            Name::new(n)
                .ok()
                .map(|name| UserEntry { user_id: *id, name })
        })
        .collect()
}

impl Ctx<'_> {
    /// The names of the users among `ids`, in order; ids with no user are left out.
    fn named(&self, ids: impl IntoIterator<Item = u32>) -> Vec<(u32, String)> {
        ids.into_iter()
            .filter_map(|id| self.users.name(id).map(|n| (id, n)))
            .collect()
    }

    pub(super) fn list_users(&mut self, st: &mut ConnState, id: u64, q: &PageRequest) -> Handled {
        let limit = usize::from(q.limit).min(self.list_limit(4 + 2 + 32));
        let names = self.named(self.users.online_after(q.after_id, limit));
        let users = user_entries(&names);
        let resp = Response::ListUsers(ListUsersResponse {
            users: List::new(users)?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }

    /// The names of the users asked for by id, online or not; ids with no user are left out.
    pub(super) fn user_names(
        &mut self,
        st: &mut ConnState,
        id: u64,
        q: &UserNamesRequest,
    ) -> Handled {
        let names = self.named(q.ids.items().iter().copied());
        let users = user_entries(&names);
        let resp = Response::UserNames(UserNamesResponse {
            users: List::new(users)?,
        });
        self.respond(st, id, &resp);
        Ok(())
    }

    pub(super) fn direct_send(
        &mut self,
        st: &mut ConnState,
        user: u32,
        id: u64,
        d: &DirectSendRequest<'_>,
    ) -> Handled {
        let name = d.to.as_str();
        let to = self
            .users
            .lookup(name)
            .ok_or_else(|| HandlerError::new(Status::ErrNotFound, format!("no user {name}")))?;
        if to == user {
            return Err(HandlerError::new(
                Status::ErrInvalidArgument,
                "a message to oneself",
            ));
        }
        let session = self.users.session(to).ok_or_else(|| {
            HandlerError::new(Status::ErrUserOffline, format!("{name} is offline"))
        })?;
        self.flood_check(st)?;
        self.rooms.inbox_publish(
            u32::from(session.worker),
            user,
            to,
            &st.name,
            d.text.as_str(),
            self.wall_ms,
        )?;
        self.wake_pending = true;
        self.respond(
            st,
            id,
            &Response::DirectSend(DirectSendResponse { to_user_id: to }),
        );
        Ok(())
    }
}
