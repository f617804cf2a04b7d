//! TODO(dns)
