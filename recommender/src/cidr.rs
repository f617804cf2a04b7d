//! TODO(cidr)
