//! What the gateway reads from a client's request before it trusts it: the
//! presented key, the client's address, the path, and the input-token bound of
//! the body. Nothing here knows the server's state.

pub mod client_ip;
pub mod credentials;
pub mod input_bound;
pub mod path;
