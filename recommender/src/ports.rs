//! TODO(ports)
