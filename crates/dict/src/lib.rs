//! The Dovecot dict proxy protocol, as spoken by Dovecot's `proxy:` dict client to the
//! chatmail dict daemons (doveauth, lastlogin, metadata).
//!
//! [`protocol`] holds pure functions over bytes (parse a request line, format replies);
//! [`server`] is the tokio unix-socket server that frames lines, keeps per-connection
//! transaction state and calls a daemon's [`Handler`].

pub mod protocol;
pub mod server;

pub use protocol::{LookupReply, ParseError, Request, parse_request};
pub use server::{
    ConnectionError, Handler, HandlerError, IterateRequest, IterateRow, Limits, StartError,
    Transaction, bind, run_daemon, serve, serve_connection,
};
