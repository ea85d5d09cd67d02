//! Hard limits on what the SIP layer accepts, so one peer cannot exhaust memory or time.

/// Size limits applied while parsing and framing. Defaults suit a carrier-facing B2BUA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (start line + headers + body), in bytes. Default 64 KiB.
    pub max_message_size: usize,
    /// Most header lines in one message. Default 256.
    pub max_headers: usize,
    /// Longest physical line, in bytes. Default 16 KiB.
    pub max_line_length: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_size: 64 * 1024,
            max_headers: 256,
            max_line_length: 16 * 1024,
        }
    }
}
