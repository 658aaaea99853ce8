//! The crate's one error type: why a connection ended abnormally. Bad
//! requests inside a healthy connection are not errors here; they get an NBD
//! error reply ([`crate::Errno`]) and the connection carries on.

use std::time::Duration;

/// Why an NBD connection was closed by the server or failed.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The socket failed or the client went away mid-message.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The client did not finish option haggling in time.
    #[error("handshake not finished within {0:?}")]
    HandshakeTimeout(Duration),
    /// proto.md: the server MUST close if the client sets unknown flags.
    #[error("client flags {0:#x} include bits this server did not offer")]
    ClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("option magic {0:#018x} is not IHAVEOPT")]
    OptionMagic(u64),
    /// An option payload longer than `OPTION_LEN_MAX`; never allocated.
    #[error("option {option} carries {len} bytes, more than the {max} allowed")]
    OptionTooBig { option: u32, len: u32, max: u32 },
    /// More options than any real client needs (denial of service guard).
    #[error("more than {0} options in one handshake")]
    TooManyOptions(u32),
    /// `NBD_OPT_EXPORT_NAME` cannot carry an error, so refusal closes.
    #[error("export {name:?} refused: {message}")]
    ExportRefused { name: String, message: String },
    /// Input fed to the negotiation in the wrong phase or with a payload
    /// that does not match its header (a bug in the shell, not the client).
    #[error("negotiation misuse: {0}")]
    Misuse(&'static str),
    /// FORCEDTLS: the client chose an export with `NBD_OPT_EXPORT_NAME`
    /// (which cannot carry an error) before starting TLS.
    #[error("client chose an export without TLS, which this server requires")]
    TlsRequired,
    /// The STARTTLS upgrade failed (TLS handshake, certificate refused) or
    /// the client sent bytes before its TLS handshake.
    #[error("TLS: {0}")]
    Tls(String),
    /// A transmission request did not start with `NBD_REQUEST_MAGIC`.
    #[error("request magic {0:#010x} is not NBD_REQUEST_MAGIC")]
    RequestMagic(u32),
    /// A rejected WRITE whose payload is too large to read and discard.
    #[error("rejected write carries {0} bytes, too many to discard")]
    PayloadTooBig(u32),
    /// A request's payload did not arrive within `Limits::payload_timeout`.
    #[error("request payload not received within {0:?}")]
    PayloadTimeout(Duration),
}

/// Shorthand for results of this crate.
pub type Result<T, E = NbdError> = std::result::Result<T, E>;
