//! TODO(audit)
