//! TODO(explain)
