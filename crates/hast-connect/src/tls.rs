//! NBD TLS towards the servers (`nbd_tls = on`): the rustls client
//! configuration hastcd's connections use.

use crate::conf::Config;
use crate::upstream::Tls;

/// The client configuration `conf` asks for; `None` when `nbd_tls` is off.
pub fn client_config(conf: &Config) -> Result<Option<Tls>, String> {
    match &conf.nbd_tls {
        None => Ok(None),
        Some(_) => Err("nbd_tls: TLS towards the servers is being built (issue 12)".to_string()),
    }
}
