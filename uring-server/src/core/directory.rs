//! Who is here: LIST_USERS, USER_NAMES, and DIRECT_SEND to one user through the inbox ring of the worker
//! that serves them.

use proto::body::*;
use proto::codec::{List, Name};
use proto::{Response, Status};

use super::error::{Handled, HandlerError};
use super::{ConnState, Ctx};

impl Ctx<'_> {
    pub(super) fn list_users(&mut self, st: &mut ConnState, id: u64, q: &PageRequest) -> Handled {
        let limit = usize::from(q.limit).min(self.list_limit(4 + 2 + 32));
        let names: Vec<(u32, String)> = self
            .users
            .online_after(q.after_id, limit)
            .into_iter()
            .filter_map(|id| self.users.name(id).map(|n| (id, n)))
            .collect();
        let users = names
            .iter()
            .filter_map(|(id, n)| {
                Name::new(n)
                    .ok()
                    .map(|name| UserEntry { user_id: *id, name })
            })
            .collect();
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
        let names: Vec<(u32, String)> = q
            .ids
            .items()
            .iter()
            .filter_map(|&id| self.users.name(id).map(|n| (id, n)))
            .collect();
        let users = names
            .iter()
            .filter_map(|(id, n)| {
                Name::new(n)
                    .ok()
                    .map(|name| UserEntry { user_id: *id, name })
            })
            .collect();
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
